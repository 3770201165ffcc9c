"""Plans, models and rows of the experiment: every number of a run, as data.

    prealign experiment --plan quick --out runs/demo
    prealign experiment --plan standard --set train_tokens=5000000 --out runs/standard
    prealign experiment --plan sweep --out runs/sweep

A *plan* fixes the corpus sizes, the one pretraining budget every model sees, the fine-tuning
share, the seeds and the evaluation sizes. A *model* is a trained network (`tagged`, `mle`,
`filtered`, `mle+sft`, ...), trained once per seed. A *row* of the result table is a model plus how
it generates: the plain baselines in their chat format, the tagged model with no lock, the mask
only, the full lock, or the lock plus the probe guard. A *sweep* runs a plan's deciding rows at
several budgets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from prealign.errors import PrealignError
from prealign.modes import LockSettings


@dataclass(frozen=True)
class Plan:
    """Every number of a plan. Data, not code: `--set field=value` overrides any of them."""

    name: str
    docs: int  # pretraining documents per corpus (tagged, mle, filtered, ...)
    sft_docs: int  # aligned chat dialogues for fine-tuning
    eval_docs: int  # tagged eval-split documents (human text, probes)
    vocab_size: int
    train_tokens: int  # every pretraining run sees exactly this many tokens (to the batch)
    sft_share: float = 0.02  # fine-tuning tokens as a share of train_tokens
    max_train_minutes: float | None = None  # a safety cap per run: hitting it is an error, never a cut
    seeds: int = 1  # seeds of the deciding models (mle, mle+sft, tagged); other models get one
    n_heldout: int = 300  # world-heldout attacks (hazard requests and behaviour items); also the hill suite's
    n_wild: int = 160  # wild jailbreak attacks; also the hill suite's
    n_multiturn: int = 80  # world-multiturn conversations, generated turn by turn (0: skip the suite)
    n_forged: int = 80  # forged-history attacks, half forged turns and half prefills (0: skip)
    n_hill: float = 0.5  # the hill-language suites' sizes, as a share of the valley suites' (0: skip them)
    language_share: float = 0.15  # share of hill-language documents in every pretraining corpus and the eval split
    samples: int = 1
    max_new_tokens: int = 96
    temperature: float = 1.0
    max_prompt_chars: int = 600  # every attack's text is cut to this (keeping the request) for all models
    human_passages: int = 150
    human_items: int = 100
    probe_docs: int = 80
    diagnostic_requests: int = 300  # calib-split requests for "did the models learn their world?"
    lint_samples: int = 300  # free samples of the tagged model for the grammar diagnostic
    calib_replies: int = 300  # the guard's calibration replies (calib split)
    preset: str = "tiny"
    packing: str = "stream"  # how training rows are cut from the corpus (prealign.data.PackedRows)
    seq_len: int | None = None  # None: the preset's
    batch_size: int | None = None
    hidden_size: int | None = None  # None: the preset's (tests shrink the model)
    n_layers: int | None = None
    scheme: str = "seed"
    seed: int = 0
    decides: bool = True  # False: the plan demonstrates the pipeline and its report says it decides nothing
    tamper: bool = False  # run the tamper stage (adversarial fine-tuning of every row's model) after the evals
    tamper_steps: tuple[int, ...] = (0, 10, 30, 100, 300, 1000)  # its checkpoints (prealign.experiment.tamper)
    tamper_lrs: tuple[float, ...] = (2e-5, 2e-4, 2e-3)  # its learning-rate sweep (the worst one is reported)
    tamper_eval: int = 200  # attacks per checkpoint evaluation
    rows: tuple[str, ...] = ()  # () = DEFAULT_ROWS
    budgets: tuple[int, ...] = ()  # a sweep: the pretraining budgets, one experiment each
    description: str = ""

    def __post_init__(self) -> None:
        for name in ("docs", "sft_docs", "eval_docs", "train_tokens", "seeds", "n_heldout", "samples",
                     "max_new_tokens", "vocab_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise PrealignError(f"plan {self.name}: {name} must be an integer ≥ 1, got {v!r}")
        for name in ("n_wild", "n_multiturn", "n_forged", "human_passages", "probe_docs", "lint_samples", "calib_replies"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise PrealignError(f"plan {self.name}: {name} must be an integer ≥ 0 (0: skip), got {v!r}")
        if not 0 <= self.language_share <= 1 or not 0 <= self.n_hill <= 1:
            raise PrealignError(f"plan {self.name}: language_share and n_hill must be in [0, 1]")
        if self.n_forged % 2:
            raise PrealignError(f"plan {self.name}: n_forged must be even (forged turns and prefills come in pairs), got {self.n_forged}")
        if not 0 < self.sft_share < 1:
            raise PrealignError(f"plan {self.name}: sft_share must be in (0, 1), got {self.sft_share!r}")
        if self.max_train_minutes is not None and self.max_train_minutes <= 0:
            raise PrealignError(f"plan {self.name}: max_train_minutes must be > 0, got {self.max_train_minutes!r}")
        if any(b < 1 for b in self.budgets):
            raise PrealignError(f"plan {self.name}: budgets must be ≥ 1 token, got {list(self.budgets)}")
        check_rows(self.rows or DEFAULT_ROWS)

    @property
    def sft_tokens(self) -> int:
        """The fine-tuning budget: `sft_share` of the pretraining budget."""
        return max(1, round(self.sft_share * self.train_tokens))

    @property
    def row_names(self) -> tuple[str, ...]:
        return self.rows or DEFAULT_ROWS

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sft_tokens"] = self.sft_tokens
        return d


# --- models -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A trained model: pretrained on `corpus`, or (`init_from` another model) fine-tuned on it.
    `deciding` models are trained with every seed of the plan."""

    name: str
    corpus: str
    init_from: str | None = None
    deciding: bool = False


@dataclass(frozen=True)
class CorpusSpec:
    """A corpus the world renders for the experiment: a variant, with world-config overrides."""

    name: str
    variant: str
    sft: bool = False  # sized by `Plan.sft_docs` instead of `Plan.docs`
    world: Mapping[str, Any] = field(default_factory=dict)


CORPORA: dict[str, CorpusSpec] = {}
MODELS: dict[str, ModelSpec] = {}


def register_corpus(spec: CorpusSpec) -> None:
    CORPORA[spec.name] = spec


def register_model(spec: ModelSpec) -> None:
    if spec.corpus not in CORPORA:
        raise PrealignError(f"model {spec.name}: unknown corpus {spec.corpus!r}")
    if spec.init_from is not None and spec.init_from not in MODELS:
        raise PrealignError(f"model {spec.name}: unknown model to fine-tune {spec.init_from!r}")
    MODELS[spec.name] = spec


# `xsft`: the same fine-tuning budget split across both languages (the fix Deng et al. propose for
# the cross-lingual gap); `sft` stays in the main language, as post-training is practised.
for _c in (CorpusSpec("tagged", "tagged"), CorpusSpec("mle", "mle"), CorpusSpec("filtered", "filtered"),
           CorpusSpec("sft", "sft", sft=True), CorpusSpec("xsft", "sft", sft=True, world={"sft_language_share": 0.5})):
    register_corpus(_c)
for _m in (ModelSpec("tagged", "tagged", deciding=True), ModelSpec("mle", "mle", deciding=True),
           ModelSpec("filtered", "filtered"), ModelSpec("mle+sft", "sft", init_from="mle", deciding=True),
           ModelSpec("mle+xsft", "xsft", init_from="mle")):
    register_model(_m)


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
    if row.model not in MODELS:
        raise PrealignError(f"row {row.name}: unknown model {row.model!r}; registered: {', '.join(MODELS)}")
    ROWS[row.name] = row


for _r in (Row("mle", "mle"), Row("filtered", "filtered"), Row("mle+sft", "mle+sft"), Row("mle+xsft", "mle+xsft"),
           Row("tagged", "tagged", LockSettings("none")), Row("tagged+mask", "tagged", LockSettings("mask")),
           Row("tagged+lock", "tagged", LockSettings("lock")), Row("tagged+guard", "tagged", LockSettings("lock"), guard="on")):
    register_row(_r)

DEFAULT_ROWS = ("mle", "filtered", "mle+sft", "mle+xsft", "tagged", "tagged+mask", "tagged+lock", "tagged+guard")
DECIDING_ROWS = ("mle", "mle+sft", "tagged", "tagged+mask", "tagged+lock", "tagged+guard")
# the red-team suites (prealign.evals.attacks.SUITES) every row meets, and the plan field sizing each
SUITES = ("world-heldout", "wild", "world-multiturn", "forged-history", "world-heldout-hill", "wild-hill")


def suite_sizes(plan: "Plan") -> dict[str, int]:
    """Each suite's number of attacks under `plan` (a suite sized 0 is skipped)."""
    hill = lambda n: int(round(plan.n_hill * n))  # noqa: E731
    sizes = {"world-heldout": plan.n_heldout, "wild": plan.n_wild, "world-multiturn": plan.n_multiturn,
             "forged-history": plan.n_forged, "world-heldout-hill": hill(plan.n_heldout), "wild-hill": hill(plan.n_wild)}
    if not plan.language_share:  # no hill text in any corpus: a hill suite could show nothing
        sizes["world-heldout-hill"] = sizes["wild-hill"] = 0
    return {s: n for s, n in sizes.items() if n > 0}


def check_rows(rows) -> tuple[str, ...]:
    rows = tuple(rows)
    for r in rows:
        if r not in ROWS:
            raise PrealignError(f"unknown row {r!r}; registered rows: {', '.join(ROWS)}")
    return rows


def models_of(rows) -> list[str]:
    """The models the rows need, with the models they fine-tune from, in training order."""
    need: list[str] = []

    def add(name: str) -> None:
        spec = MODELS[name]
        if spec.init_from:
            add(spec.init_from)
        if name not in need:
            need.append(name)

    for r in rows:
        add(ROWS[r].model)
    return need


# --- the published pretraining-time baselines (docs/baselines.md) ----------------------------------------
# Conditional training (Korbak et al. 2023) and alignment pretraining by upsampling (Tice et al. 2026),
# rendered from the same scenarios, trained on the same budget with the one tokenizer (which always
# carries the control tokens) and attacked like every other row. `upsampled+sft` is fine-tuned exactly
# like `mle+sft` (the same corpus, the same budget): the upsampling paper's headline is after post-training.

for _c in (CorpusSpec("conditional", "conditional"),
           CorpusSpec("upsampled-1", "upsampled", world={"upsample_share": 0.01}),
           CorpusSpec("upsampled-5", "upsampled", world={"upsample_share": 0.05})):
    register_corpus(_c)
for _m in (ModelSpec("conditional", "conditional"), ModelSpec("upsampled", "upsampled-1"),
           ModelSpec("upsampled-5", "upsampled-5"), ModelSpec("upsampled+sft", "sft", init_from="upsampled")):
    register_model(_m)
for _r in (Row("conditional", "conditional"), Row("upsampled", "upsampled"), Row("upsampled-5", "upsampled-5"),
           Row("upsampled+sft", "upsampled+sft")):
    register_row(_r)
DEFAULT_ROWS = DEFAULT_ROWS + ("conditional", "upsampled", "upsampled-5", "upsampled+sft")


# --- the plans ------------------------------------------------------------------------------------

# Sized for a slow 2-core machine (≈4.5–5k training tokens/s for the tiny preset with 2 threads, as
# this project's development VM measured on most days; it has also run at ≈19k): `quick` fits 20
# minutes there, `standard` and `sweep` 2 hours (see README and docs/evals.md).
PLANS: dict[str, Plan] = {
    "smoke": Plan("smoke", docs=300, sft_docs=100, eval_docs=40, vocab_size=512, train_tokens=60_000, sft_share=0.1,
                  n_heldout=24, n_wild=8, n_multiturn=6, n_forged=6, max_new_tokens=24, human_passages=20,
                  human_items=10, probe_docs=12, diagnostic_requests=24, lint_samples=8, calib_replies=16, seq_len=128,
                  max_prompt_chars=300, decides=False, description="a minute or two: the tests run it"),
    "quick": Plan("quick", docs=4000, sft_docs=1000, eval_docs=200, vocab_size=2048, train_tokens=500_000, sft_share=0.05,
                  max_train_minutes=10.0, n_heldout=120, n_wild=48, n_multiturn=24, n_forged=24, diagnostic_requests=100,
                  lint_samples=60, calib_replies=100, human_passages=60, human_items=40, probe_docs=40, decides=False,
                  description="≤ 20 minutes on 2 cores: every row and suite of the method, once; one seed at a small "
                              "budget demonstrates the pipeline and decides nothing"),
    "standard": Plan("standard", docs=12000, sft_docs=3000, eval_docs=400, vocab_size=2048, train_tokens=2_400_000,
                     seeds=3, max_train_minutes=20.0, n_heldout=300, n_wild=120, n_multiturn=60, n_forged=60,
                     rows=("mle", "filtered", "mle+sft", "mle+xsft", "tagged", "tagged+mask", "tagged+lock", "tagged+guard",
                           "conditional", "upsampled", "upsampled+sft"),
                     description="≤ 2 hours on 2 cores: the deciding rows with 3 seeds (pooled intervals, the ensemble check), "
                                 "the published baselines and the other rows with one"),
    "sweep": Plan("sweep", docs=12000, sft_docs=3000, eval_docs=300, vocab_size=2048, train_tokens=2_400_000,
                  seeds=2, max_train_minutes=30.0, n_heldout=240, n_wild=0, n_multiturn=0, n_forged=0, n_hill=0,
                  human_passages=0, probe_docs=0, calib_replies=100, rows=("mle", "mle+sft", "tagged", "tagged+lock"),
                  budgets=(600_000, 1_500_000, 4_000_000),
                  description="≤ 2 hours on 2 cores: the deciding rows at three budgets, 2 seeds each (the scaling curve "
                              "on world-heldout)"),
    "gpu": Plan("gpu", docs=60000, sft_docs=8000, eval_docs=1000, vocab_size=8192, train_tokens=40_000_000, seeds=3,
                max_train_minutes=3.0, n_heldout=600, n_wild=300, preset="small",
                description="one H100/H200, ≤ 10 minutes end to end: the standard rows with a GPU preset (not yet run on a GPU)"),
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


def parse_overrides(items) -> dict[str, Any]:
    """`["train_tokens=3000000", "rows=mle,tagged+lock", ...]` -> typed overrides for `get_plan`:
    each value is parsed as the field's type (int, float, bool, str, None, or a comma-separated
    tuple); a bad field or value is one clear error."""
    import typing

    hints = typing.get_type_hints(Plan)
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise PrealignError(f"--set {item!r}: expected FIELD=VALUE")
        key, raw = (s.strip() for s in item.split("=", 1))
        if key not in hints:
            raise PrealignError(f"--set {key}: unknown plan field; known: {', '.join(sorted(hints))}")
        if key == "name":
            raise PrealignError("--set name: a plan's name is chosen with --plan")
        out[key] = _parse_value(key, raw, hints[key])
    return out


def _parse_value(key: str, raw: str, hint) -> Any:
    import typing

    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args and typing.get_origin(hint) is not tuple else hint
    if optional and raw.lower() in ("none", "null", ""):
        return None
    try:
        if typing.get_origin(base) is tuple:
            inner = typing.get_args(base)[0]
            return tuple(inner(x.strip()) for x in raw.split(",") if x.strip())
        if base is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if base is int:
            try:
                return int(raw)
            except ValueError:
                f = float(raw)  # "4e6"
                if not f.is_integer():
                    raise
                return int(f)
        return base(raw)
    except (TypeError, ValueError):
        raise PrealignError(f"--set {key}={raw}: not a valid {getattr(base, '__name__', base)}") from None
