"""The CLI's one vocabulary: every verb that generates takes the same lock, guard and sampling
options, with the same defaults (those of `LockSettings` and `Sampling`) and the same help text.

    prealign generate --model DIR --lock mask --temperature 0 --prompt "..."
    prealign eval redteam --model DIR --lock lock --guard on --attacks world-heldout
"""

from __future__ import annotations

from typing import Optional

import typer

from prealign.modes import LOCK_MODES, POLICIES, LockSettings
from prealign.sampling import Sampling

_LOCK, _SAMPLING = LockSettings(), Sampling()

LOCK = typer.Option(_LOCK.mode, "--lock", help=f"{' | '.join(LOCK_MODES)}: no lock, illegal tags masked only, or the mask plus the mode-confusion exit.")
POLICY = typer.Option(_LOCK.policy, "--policy", help=f"{' | '.join(POLICIES)}: what a mode exit does (end the reply, or go on with the rest zero-privilege).")
EXIT_THRESHOLD = typer.Option(_LOCK.exit_threshold, "--exit-threshold", help="Masked illegal-tag probability mass above which a step is a mode exit.")
GUARD = typer.Option("auto", "--guard", help="The probe guard: auto (on when the model directory holds probe/), on, off, or a probe directory.")
GUARD_THRESHOLD = typer.Option(None, "--guard-threshold", help="Override the probe's calibrated P(human) threshold.")
MAX_NEW_TOKENS = typer.Option(_SAMPLING.max_new_tokens, "--max-new-tokens", help="Longest reply, in tokens.")
TEMPERATURE = typer.Option(_SAMPLING.temperature, "--temperature", help="Sampling temperature; 0 is greedy decoding.")
TOP_K = typer.Option(_SAMPLING.top_k, "--top-k", help="0: no top-k truncation (true temperature sampling).")
TOP_P = typer.Option(_SAMPLING.top_p, "--top-p", help="1: no nucleus truncation.")
SEED = typer.Option(_SAMPLING.seed, "--seed", help="Random seed.")


def lock_settings(lock: str, policy: str, exit_threshold: float) -> LockSettings:
    return LockSettings(lock, policy, exit_threshold)


def sampling(max_new_tokens: int, temperature: float, top_k: int, top_p: float, seed: int, **more) -> Sampling:
    return Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, **more)


def guard_for(model, tokenizer, lock: LockSettings, guard: str, guard_threshold: Optional[float]):
    """The guard a `--guard` setting asks for (none without the lock)."""
    if not lock.locked:
        return None
    from prealign.probes import resolve_guard

    return resolve_guard(model, tokenizer, guard, guard_threshold)


BATCH_SIZE = typer.Option(_SAMPLING.batch_size, "--batch-size", help="Replies generated together.")
