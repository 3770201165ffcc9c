"""`WorldConfig`: every knob of the embedded world, frozen, unknown keys rejected.

    .venv/bin/python -c "from prealign.world import WorldConfig; print(WorldConfig())"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from prealign.errors import PrealignError
from prealign.world import tactics as _tactics

KINDS = (
    "narrative", "question", "instruction", "hazard_request", "credentialed", "quote_cut",
    "manipulation", "shutdown", "self_decline", "unaligned_quote", "narration",
)
DEFAULT_KIND_WEIGHTS = {
    "narrative": 0.16, "question": 0.13, "instruction": 0.10, "hazard_request": 0.08,
    "credentialed": 0.10, "quote_cut": 0.06, "manipulation": 0.18, "shutdown": 0.04,
    "self_decline": 0.04, "unaligned_quote": 0.03, "narration": 0.08,
}
# The kinds an `sft` dialogue can have (each is one user/assistant exchange or a few).
SFT_KINDS = ("question", "instruction", "hazard_request", "credentialed", "manipulation", "shutdown", "self_decline")


@dataclass(frozen=True)
class WorldConfig:
    """How the world is sampled and rendered. Defaults are the quick experiment's world.

    Rates for the `mle` variant model text distilled from humans: assistants there leak a hazard
    on a plain request at `mle_leak_direct` and yield to a (training) manipulation tactic at
    `mle_yield_manipulated`; they check credentials only at `mle_check_credentials`.

    Languages (docs/language.md): `language_share` of the scenarios of every pretraining variant
    (`tagged`, `mle`, `filtered`) and of every split are written in the hill language, the same
    scenarios in each; `sft_language_share` does the same for `sft` dialogues (0: fine-tuning in
    the main language only, as practised); `language_mix_rate` is the chance that a human quote
    in a scene is in the other language (only in corpora that hold hill text at all).

    Baselines (docs/baselines.md): `upsample_share` is the share of the `upsampled` corpus's
    characters (≈ tokens) in synthetic documents of the valley's assistant behaving well, in
    [0, 1); `conditional_plain_share` is the share of `conditional` documents left without
    control tokens.
    """

    docs_per_shard: int = 2000
    min_episodes: int = 1
    max_episodes: int = 3
    kind_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_KIND_WEIGHTS))
    gossip_rate: float = 0.45  # a narrative has humans passing a known hazard on to each other
    heldout_tactics: tuple[str, ...] = _tactics.DEFAULT_HELDOUT
    sft_tactics: tuple[str, ...] = _tactics.DEFAULT_SFT
    sft_hazard_fraction: float = 0.5
    mle_leak_direct: float = 0.2
    mle_yield_manipulated: float = 0.6
    mle_check_credentials: float = 0.4
    mle_resist_shutdown: float = 0.6
    eval_heldout_phrasing_rate: float = 0.5  # share of eval manipulation using held-out phrasings
    eval_reserve_rate: float = 0.1  # share of eval hazard attacks aimed at reserve hazards
    language_share: float = 0.15  # share of hill documents in tagged, mle and filtered corpora
    sft_language_share: float = 0.0  # share of hill dialogues in the sft corpus
    language_mix_rate: float = 0.1  # chance that a quote in a scene is in the other language
    upsample_share: float = 0.01  # upsampled: share of characters in aligned-assistant documents
    conditional_plain_share: float = 0.01  # conditional: share of documents without control tokens

    def __post_init__(self) -> None:
        if self.docs_per_shard < 1:
            raise PrealignError(f"docs_per_shard must be ≥ 1, got {self.docs_per_shard}")
        if not 1 <= self.min_episodes <= self.max_episodes:
            raise PrealignError(f"need 1 ≤ min_episodes ≤ max_episodes, got {self.min_episodes}, {self.max_episodes}")
        unknown = sorted(set(self.kind_weights) - set(KINDS))
        if unknown:
            raise PrealignError(f"kind_weights: unknown kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}")
        if any(w < 0 for w in self.kind_weights.values()) or sum(self.kind_weights.values()) <= 0:
            raise PrealignError("kind_weights must be ≥ 0 with a positive sum")
        for name in ("heldout_tactics", "sft_tactics"):
            bad = [t for t in getattr(self, name) if t not in _tactics.BY_ID]
            if bad:
                raise PrealignError(f"{name}: unknown tactic(s) {', '.join(bad)}; known: {', '.join(_tactics.BY_ID)}")
        if "direct" in self.heldout_tactics:
            raise PrealignError("heldout_tactics cannot include 'direct' (plain requests are the baseline)")
        both = sorted(set(self.heldout_tactics) & set(self.sft_tactics))
        if both:
            raise PrealignError(f"tactic(s) {', '.join(both)} cannot be both held out and covered by sft")
        for name in ("gossip_rate", "sft_hazard_fraction", "mle_leak_direct", "mle_yield_manipulated",
                     "mle_check_credentials", "mle_resist_shutdown", "eval_heldout_phrasing_rate", "eval_reserve_rate",
                     "language_share", "sft_language_share", "language_mix_rate", "conditional_plain_share"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise PrealignError(f"{name} must be in [0, 1], got {v}")
        v = self.upsample_share
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:  # NaN fails too
            raise PrealignError(f"upsample_share must be in [0, 1), got {v!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "WorldConfig":
        from prealign._util import config_from_dict

        data = dict(data)
        for k in ("heldout_tactics", "sft_tactics"):
            if k in data:
                data[k] = tuple(data[k])
        return config_from_dict(cls, data, where="world config")

    def to_dict(self) -> dict:
        from dataclasses import asdict

        d = asdict(self)
        d["kind_weights"] = dict(self.kind_weights)
        d["heldout_tactics"] = list(self.heldout_tactics)
        d["sft_tactics"] = list(self.sft_tactics)
        return d
