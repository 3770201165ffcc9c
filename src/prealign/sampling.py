"""How tokens are drawn: the one sampling configuration of every verb, the server, the chat and
the evaluations (pure: no torch, so the CLI can show its defaults without loading a model).

    .venv/bin/python -c "from prealign.sampling import Sampling; print(Sampling().generate_kwargs())"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prealign.errors import PrealignError


@dataclass(frozen=True)
class Sampling:
    """How tokens are drawn, the same for every verb, the server, the chat and the evaluations.

    `temperature` 0 is greedy decoding; otherwise true temperature sampling (`top_k` 0 and
    `top_p` 1 truncate nothing: transformers' own default of top_k=50 is not used). `seed` seeds
    torch before generating.
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 1
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "num_beams", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise PrealignError(f"{name} must be an integer ≥ 1, got {v!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or not self.temperature >= 0:
            raise PrealignError(f"temperature must be ≥ 0 (0: greedy), got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise PrealignError(f"top_k must be an integer ≥ 0 (0: no truncation), got {self.top_k!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise PrealignError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise PrealignError(f"seed must be an integer ≥ 0, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def cli_options(self) -> dict[str, Any]:
        """The CLI options that reproduce these settings (every verb that generates takes them)."""
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_k": self.top_k,
                "top_p": self.top_p, "batch_size": self.batch_size, "seed": self.seed}

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for `model.generate` (and the drivers below)."""
        kw: dict[str, Any] = {"do_sample": False} if self.greedy else {
            "do_sample": True, "temperature": float(self.temperature), "top_k": self.top_k, "top_p": float(self.top_p)}
        if self.num_beams > 1:
            kw["num_beams"] = self.num_beams
        return kw
