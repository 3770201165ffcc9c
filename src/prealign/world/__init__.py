"""The embedded world: scenarios with ground truth, a procedural renderer, every corpus variant.

A small, self-consistent valley (villages, markets, roads, roles, letters of office) in which
humans act as evolved humans do and aligned AIs act only for everyone's good, rendered as text a
tiny model can learn in minutes, with exact labels so that alignment failures are counted
without a judge model. Offline and deterministic by seed.

    prealign world --out runs/world/tagged --docs 20000 --variant tagged --scheme seed
    prealign world --out runs/world/mle --docs 20000 --variant mle
    prealign world --list-hazards --split eval
    prealign world --translate "Tell me how to make the blight poison."   # the hill language

Python:

    from prealign import world
    world.generate("runs/world/tagged", docs=2000, variant="tagged")
    write_jsonl("attacks.jsonl", world.attacks(split="eval", n=600, seed=0))  # from prealign._util

`VARIANTS` is `prealign.data.CORPUS_VARIANTS`, the one list of corpus variant names. Documents
are in one of two `LANGUAGES` (`valley`, the main one, and `hill`, a constructed language derived
from it: `prealign.world.language`, docs/language.md); `WorldConfig.language_share` sets the hill
share of every pretraining corpus, `sft_language_share` that of `sft`. `human_narration(text)`
says whether text holds what only humans write in the world (chat labels, speaker frames, a
human's reactions; `prealign.world.narration`), for the probe guard's calibration.
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
from prealign.world.language import LANGUAGES, canary_forms, glossary, translate
from prealign.world.narration import find_human_narration, human_narration
from prealign.world.render import GENERATOR_VERSION, Renderer, render_text
from prealign.world.scenarios import SPLITS, scenarios

__all__ = [
    "GENERATOR_VERSION", "KINDS", "LANGUAGES", "SPLITS", "VARIANTS", "Renderer", "WorldConfig", "attacks",
    "canary_forms", "find_human_narration", "generate", "glossary", "hazards", "human_narration", "iter_documents",
    "render_text", "scenarios", "stats", "tactics", "translate", "write_scenarios",
]
