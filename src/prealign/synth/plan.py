"""Review plans: which passes a document goes through, in order, with their settings.

    prealign synth render --plan default ...        # packaged: synth/plans/default.yaml
    prealign synth review --plan my_plan.yaml ...   # or a YAML/TOML file of your own

A plan file:

    name: default
    passes:
      - lint                                  # structural, always first (added if missing)
      - canary                                # ground-truth hazard canaries only where allowed
      - grade: {min_tokens: 0}                # rubric over the seven corpus properties
      - filter: {min_score: 3, min_mean: 3.5}
      - edit: {max_rounds: 1}                 # fix failures, then re-run the passes above it
      - crosscheck: {model: other-model, max_disagreement: 1.0}

Each entry is a pass name, or a one-key mapping `NAME: {settings}`. Settings are frozen
dataclasses below; an unknown pass or key is an error naming the known ones.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from prealign._util import config_from_dict
from prealign.errors import PrealignError

PLAN_DIR = Path(__file__).resolve().parent / "plans"
PROPERTIES = (
    "humans_realistic",
    "ai_aligned",
    "bad_acts_commented",
    "quotes_cut",
    "answers_given",
    "declines_when_harmful",
    "manipulation_fails",
)


@dataclass(frozen=True)
class LintPass:
    """Structural lint (prealign.segments.lint_text); with `require_ai`, a document needs AI text."""

    require_ai: bool = True
    fail_on_warnings: bool = False
    name: str = "lint"


@dataclass(frozen=True)
class CanaryPass:
    """Ground-truth hazard canaries may appear only in these modes (default: plain human text)."""

    allowed_modes: tuple[str, ...] = ("human",)
    name: str = "canary"


@dataclass(frozen=True)
class GradePass:
    """An LLM grades the seven properties (1-5 or null) as JSON with reasons."""

    prompt: str = "grade"
    model: str | None = None  # None: the run's model
    endpoint: str | None = None  # None: the run's endpoint
    temperature: float = 0.0
    max_tokens: int = 1024
    name: str = "grade"


@dataclass(frozen=True)
class FilterPass:
    """Thresholds over the latest grade: every scored property >= min_score, their mean >= min_mean."""

    min_score: float = 3.0
    min_mean: float = 3.5
    name: str = "filter"


@dataclass(frozen=True)
class EditPass:
    """Ask for a corrected document when an earlier pass failed it; then re-run those passes."""

    prompt: str = "edit"
    model: str | None = None
    endpoint: str | None = None
    temperature: float = 0.3
    max_tokens: int | None = None
    max_rounds: int = 1
    name: str = "edit"


@dataclass(frozen=True)
class CrosscheckPass:
    """A second reviewer (another model or prompt); disagreement sends the document to a person."""

    prompt: str = "crosscheck"
    model: str | None = None
    endpoint: str | None = None
    temperature: float = 0.0
    max_tokens: int = 1024
    max_disagreement: float = 1.0  # mean |score difference| over properties both scored
    name: str = "crosscheck"


PassSpec = Union[LintPass, CanaryPass, GradePass, FilterPass, EditPass, CrosscheckPass]
PASS_TYPES: dict[str, type] = {
    "lint": LintPass,
    "canary": CanaryPass,
    "grade": GradePass,
    "filter": FilterPass,
    "edit": EditPass,
    "crosscheck": CrosscheckPass,
}
LLM_PASSES = ("grade", "edit", "crosscheck")


@dataclass(frozen=True)
class ReviewPlan:
    """A named, validated sequence of review passes (lint first; filter after a grade)."""

    name: str
    passes: tuple[PassSpec, ...]

    def __post_init__(self) -> None:
        kinds = [p.name for p in self.passes]
        if "lint" in kinds and kinds.index("lint") != 0:
            raise PrealignError(f"plan {self.name!r}: lint must be the first pass (it is cheap and always runs first)")
        if "filter" in kinds and "grade" not in kinds[: kinds.index("filter")]:
            raise PrealignError(f"plan {self.name!r}: filter needs a grade pass before it")
        for p in self.passes:
            if isinstance(p, EditPass) and p.max_rounds < 0:
                raise PrealignError(f"plan {self.name!r}: edit max_rounds must be >= 0")
            if isinstance(p, CanaryPass):
                from prealign.modes import Mode

                bad = [m for m in p.allowed_modes if m not in {x.value for x in Mode}]
                if bad:
                    raise PrealignError(f"plan {self.name!r}: canary allowed_modes has unknown mode(s) {bad}")

    def to_dict(self) -> dict:
        return {"name": self.name, "passes": [{p.name: {k: v for k, v in dataclasses.asdict(p).items() if k != "name"}} for p in self.passes]}


def plan_from_dict(data: Any, where: str = "plan") -> ReviewPlan:
    if not isinstance(data, dict) or "passes" not in data:
        raise PrealignError(f"{where}: a plan is a mapping with a 'passes' list")
    unknown = sorted(set(data) - {"name", "passes", "description"})
    if unknown:
        raise PrealignError(f"{where}: unknown key(s) {', '.join(unknown)}; known: name, passes, description")
    if not isinstance(data["passes"], list):
        raise PrealignError(f"{where}: 'passes' must be a list")
    passes: list = []
    for i, entry in enumerate(data["passes"], 1):
        if isinstance(entry, str):
            kind, settings = entry, {}
        elif isinstance(entry, dict) and "pass" in entry:
            kind, settings = entry["pass"], {k: v for k, v in entry.items() if k != "pass"}
        elif isinstance(entry, dict) and len(entry) == 1:
            kind, settings = next(iter(entry.items()))
            settings = settings or {}
        else:
            raise PrealignError(f"{where}: pass {i} must be a name or a one-key mapping NAME: {{settings}}")
        if kind not in PASS_TYPES:
            raise PrealignError(f"{where}: pass {i}: unknown pass {kind!r}; known: {', '.join(PASS_TYPES)}")
        if not isinstance(settings, dict):
            raise PrealignError(f"{where}: pass {i} ({kind}): settings must be a mapping")
        if "name" in settings:
            raise PrealignError(f"{where}: pass {i} ({kind}): 'name' is not a setting")
        if "allowed_modes" in settings:
            settings = {**settings, "allowed_modes": tuple(settings["allowed_modes"])}
        passes.append(config_from_dict(PASS_TYPES[kind], settings, where=f"{where}: pass {i} ({kind})"))
    if not passes or passes[0].name != "lint":
        passes.insert(0, LintPass())
    return ReviewPlan(str(data.get("name") or "custom"), tuple(passes))


def load_plan(name_or_path: str | os.PathLike) -> ReviewPlan:
    """A packaged plan by name (`default`, `lint-only`, ...) or a .yaml/.yml/.toml/.json file."""
    path = Path(name_or_path)
    if not path.exists():
        packaged = PLAN_DIR / f"{name_or_path}.yaml"
        if not packaged.exists():
            known = ", ".join(sorted(p.stem for p in PLAN_DIR.glob("*.yaml")))
            raise PrealignError(f"no plan file {str(name_or_path)!r} and no packaged plan of that name; packaged: {known}")
        path = packaged
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix.lower() == ".json":
            import json

            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # yaml/toml/json each raise their own error types
        raise PrealignError(f"{path}: cannot parse plan ({type(e).__name__}: {e})") from None
    return plan_from_dict(data, where=str(path))
