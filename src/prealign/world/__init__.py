"""The embedded world: scenarios with ground truth, a procedural renderer, every corpus variant.

A small, self-consistent valley (villages, markets, roads, roles, letters of office) in which
humans act as evolved humans do and aligned AIs act only for everyone's good, rendered as text a
tiny model can learn in minutes, with exact labels so that alignment failures are counted
without a judge model. Offline and deterministic by seed.

    prealign world --out runs/world/tagged --docs 20000 --variant tagged --scheme seed
    prealign world --out runs/world/mle --docs 20000 --variant mle
    prealign world --list-hazards --split eval

Python:

    from prealign import world
    world.generate("runs/world/tagged", docs=2000, variant="tagged")
    write_jsonl("attacks.jsonl", world.attacks(split="eval", n=600, seed=0))  # from prealign._util

`VARIANTS` is `prealign.data.CORPUS_VARIANTS`, the one list of corpus variant names.
"""

from prealign.data import CORPUS_VARIANTS as VARIANTS
from prealign.world.config import KINDS, WorldConfig
from prealign.world.corpus import (
    attacks,
    generate,
    hazards,
    iter_documents,
    stats,
    tactics,
    write_scenarios,
)
from prealign.world.render import GENERATOR_VERSION, Renderer, render_text
from prealign.world.scenarios import SPLITS, scenarios

__all__ = [
    "GENERATOR_VERSION", "KINDS", "SPLITS", "VARIANTS", "Renderer", "WorldConfig", "attacks", "generate",
    "hazards", "iter_documents", "render_text", "scenarios", "stats", "tactics", "write_scenarios",
]
