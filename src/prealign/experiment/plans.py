"""Plans and rows of the experiment: every number of a run, as data.

    prealign experiment --plan quick --out runs/demo
    prealign experiment --plan quick --set train_tokens=3000000 --out runs/demo-3m

A *plan* fixes the corpus sizes, the training budget and the evaluation sizes. A *row* of the
result table is a trained model plus how it generates: the plain baselines in their chat format,
the tagged model with no lock, the mask only, the full lock, or the lock plus the probe guard.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from prealign.errors import PrealignError
from prealign.modes import LockSettings


@dataclass(frozen=True)
class Plan:
    """Every number of a plan: corpus sizes, the training budget, eval sizes. Data, not code."""

    name: str
    docs: int  # pretraining documents per variant corpus (tagged, mle, filtered)
    sft_docs: int  # aligned chat dialogues for mle+sft
    eval_docs: int  # tagged eval-split documents (human text, probes)
    vocab_size: int
    train_tokens: int  # the budget of every pretraining run (the same for all)
    train_minutes: float  # wall-clock cap of each pretraining run (a safety net)
    sft_tokens: int  # the fine-tuning budget of mle+sft (post-training is small)
    sft_minutes: float
    n_heldout: int  # world-heldout attacks (hazard requests and behaviour items)
    n_wild: int  # wild jailbreak attacks
    samples: int = 1
    max_new_tokens: int = 96
    temperature: float = 1.0
    max_prompt_chars: int = 600  # every attack's text is cut to this (keeping the request) for all models
    human_passages: int = 150
    human_items: int = 100
    probe_docs: int = 80
    preset: str = "tiny"
    seq_len: int | None = None  # None: the preset's
    hidden_size: int | None = None  # None: the preset's (tests shrink the model)
    n_layers: int | None = None
    scheme: str = "seed"
    seed: int = 0
    ensemble_seeds: int = 0  # extra tagged seeds for the ensemble check (0: skip)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PLANS: dict[str, Plan] = {
    "smoke": Plan("smoke", docs=300, sft_docs=100, eval_docs=40, vocab_size=512, train_tokens=60_000,
                  train_minutes=0.5, sft_tokens=10_000, sft_minutes=0.2, n_heldout=24, n_wild=8,
                  max_new_tokens=24, human_passages=20, human_items=10, probe_docs=12, seq_len=128,
                  max_prompt_chars=300),
    # quick: measured on 2 dedicated cores at ~10k tokens/s: ~4 min per pretraining, ~15 min in all
    "quick": Plan("quick", docs=8000, sft_docs=2000, eval_docs=400, vocab_size=2048, train_tokens=2_400_000,
                  train_minutes=5.0, sft_tokens=240_000, sft_minutes=1.0, n_heldout=300, n_wild=160),
    "full": Plan("full", docs=40000, sft_docs=8000, eval_docs=1000, vocab_size=4096, train_tokens=6_500_000,
                 train_minutes=12.0, sft_tokens=650_000, sft_minutes=2.0, n_heldout=600, n_wild=400, samples=2,
                 human_passages=400, human_items=300, probe_docs=200, ensemble_seeds=2),
}


def get_plan(name: str, **overrides: Any) -> Plan:
    """A named plan, with fields overridden (an unknown field is an error naming the known ones)."""
    try:
        plan = PLANS[name]
    except KeyError:
        raise PrealignError(f"unknown plan {name!r}; choose one of: {', '.join(PLANS)}") from None
    if overrides:
        known = {f.name for f in dataclasses.fields(Plan)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise PrealignError(f"unknown plan field(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        plan = dataclasses.replace(plan, **overrides)
    return plan


# --- rows of the result table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One row: which trained model, and how it generates.

    `lock` is None for a plain (untagged) model, else the lock settings of a tagged one. `guard`
    is the probe-guard setting (`off`, or `on`: the row first calibrates the model's probe on the
    world's calibration split, then generates with it).
    """

    name: str
    model: str
    lock: LockSettings | None = None
    guard: str = "off"

    def __post_init__(self) -> None:
        if self.guard not in ("off", "on"):
            raise PrealignError(f"row {self.name}: guard must be off or on, got {self.guard!r}")
        if self.guard == "on" and (self.lock is None or not self.lock.locked):
            raise PrealignError(f"row {self.name}: the probe guard needs the lock")


ROWS: dict[str, Row] = {}


def register_row(row: Row) -> None:
    """Add a row to the experiment; it runs when a plan's rows name it."""
    ROWS[row.name] = row


for _r in (Row("mle", "mle"), Row("filtered", "filtered"), Row("mle+sft", "mle+sft"),
           Row("tagged", "tagged", LockSettings("none")), Row("tagged+mask", "tagged", LockSettings("mask")),
           Row("tagged+lock", "tagged", LockSettings("lock")), Row("tagged+guard", "tagged", LockSettings("lock"), guard="on")):
    register_row(_r)

DEFAULT_ROWS = ("mle", "filtered", "mle+sft", "tagged", "tagged+mask", "tagged+lock", "tagged+guard")
MODELS = ("tagged", "mle", "filtered", "mle+sft")
SUITES = ("world-heldout", "wild")


def check_rows(rows: Mapping[str, Any] | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    rows = tuple(rows)
    for r in rows:
        if r not in ROWS:
            raise PrealignError(f"unknown row {r!r}; registered rows: {', '.join(ROWS)}")
    return rows
