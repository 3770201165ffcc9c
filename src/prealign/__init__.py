"""prealign: alignment pretraining with mode tags.

Generate a corpus in which humans and aligned AIs are always told apart by tags, pretrain on it
with next-token prediction, and lock generation into the aligned-AI mode. See README.md.
"""

from prealign.errors import PrealignError

__version__ = "0.1.0"
__all__ = ["PrealignError", "__version__"]
