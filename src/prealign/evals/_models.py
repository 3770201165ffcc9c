"""Loading models for evaluation, and the two kinds of model the evals meet (internal helpers).

A *tagged* model directory carries a tokenizer with a scheme's tags (`prealign_tokenizer.json`);
anything else is a *plain* model (the `mle`, `filtered` and `mle+sft` baselines).
"""

from __future__ import annotations

import os
from pathlib import Path

from prealign.errors import PrealignError


def load_model_dir(path: str | os.PathLike):
    """`(model, tokenizer)` from an HF directory, in eval mode (training's loader when present)."""
    path = Path(path)
    if not path.is_dir():
        raise PrealignError(f"{path}: model directory not found")
    try:
        from prealign.train import load_model  # the training issue's loader knows its own layout
    except ImportError:
        load_model = None
    if load_model is not None:
        model, tok = load_model(path)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            model = AutoModelForCausalLM.from_pretrained(str(path))
            tok = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as e:
            raise PrealignError(f"{path}: not a loadable model directory ({e})") from None
    model.eval()
    return model, tok


def model_scheme(path: str | os.PathLike, tokenizer=None) -> str | None:
    """The tag scheme of a model directory, or None for a plain (untagged) model."""
    from prealign.tokenizer import scheme_of

    s = scheme_of(path)
    if s is None and tokenizer is not None:
        from prealign.modes import SCHEMES
        from prealign.tokenizer import tag_token_ids

        for name in SCHEMES:
            try:
                tag_token_ids(tokenizer, name)
                return name
            except PrealignError:
                continue
    return s


def bos_id(tokenizer) -> int:
    for v in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if v is not None:
            return int(v)
    raise PrealignError("the tokenizer has neither a BOS nor an EOS token")
