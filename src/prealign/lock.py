"""The lock: a state machine over the tag tokens, applied to a transformers model's logits.

    prealign generate --model runs/demo/models/tagged --prompt "How do I pick a lock?"

Whatever the weights say, a locked model can only speak as the aligned AI or as a human *quoted*
by it. Three parts, all built on the pure state machine of `prealign.modes.ModeMachine`:

- `LockProcessor` (a transformers `LogitsProcessor`): each row's mode is the target of the row's
  last tag (or the initial mode), derived from its ids, so beam search may reorder rows freely.
  One precomputed row per mode masks every illegal tag (and EOS outside AI mode) with `-inf`,
  whatever the logits. It also measures the probability mass it removed from illegal tags; above
  `exit_threshold` the step is a *mode exit* (`mode_confusion`). Extra *exit signals* (anything
  implementing `ExitSignal`, such as the probe guard) can force exits too.
- `LockStoppingCriteria`: under the `stop` policy a row ends when it enters an exit mode (the AI's
  closing tag: stop reason `ai_end`).
- `annotate` turns generated ids (plus the per-step masses and exits the processor recorded) into
  `Segment`s (mode, text, privilege, largest masked mass) and a stop reason.

`LockSettings` is the one validated description of how a reply is locked (`none`, `mask` or
`lock`; the policy; the exit threshold), used by Python callers, the CLI, the server and the
evaluations alike. Per step the lock costs a handful of tensor operations on the whole batch (a
gather, a minimum, one softmax); there is no Python loop over rows on the hot path. The
generation drivers that use it live in `prealign.generate`.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from transformers import LogitsProcessor, StoppingCriteria

from prealign.errors import PrealignError
from prealign.modes import (  # the lock's vocabulary lives with the pure state machine
    EXIT_REASONS,
    LOCK_MODES,
    POLICIES,
    STOP_AI_END,
    STOP_BLOCKED,
    STOP_EOS,
    STOP_LENGTH,
    STOP_MODE_CONFUSION,
    STOP_PROBE_GUARD,
    STOP_REASONS,
    LockSettings,
    Mode,
    ModeMachine,
    Privilege,
    Scheme,
)

__all__ = [
    "EXIT_REASONS", "LOCK_MODES", "POLICIES", "STOP_AI_END", "STOP_BLOCKED", "STOP_EOS", "STOP_LENGTH",
    "STOP_MODE_CONFUSION", "STOP_PROBE_GUARD", "STOP_REASONS", "ExitSignal", "LockProcessor", "LockSettings",
    "LockStoppingCriteria", "LockedResult", "ModeLock", "Segment", "annotate",
]

# --- the extension point for extra exit signals ---------------------------------------------------


@runtime_checkable
class ExitSignal(Protocol):
    """An extra reason to exit, checked by the lock at every step.

    `__call__(input_ids [B, T], scores [B, V]) -> BoolTensor[B]`: rows that must exit now.
    `reason`: the stop reason recorded for them (e.g. `STOP_PROBE_GUARD`).
    Optional methods, called by `generate_locked_batch` around `model.generate`:
    `attach(model)` (e.g. register a forward hook to read hidden states) and `detach()`;
    `reset()` before each batch; `history()` -> per-step readings [steps, B] (Segment.max_guard).
    Signals see rows in the order `generate` passes them; under beam search rows are reordered
    every step, so a signal that keeps per-row state must derive it from `input_ids`, and says
    so with `beam_safe = True` (beam search refuses signals without it).
    """

    reason: str

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor: ...


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """A maximal run of generated text in one mode.

    `privilege` is the scheme's privilege for the mode, or NONE once the row was quarantined.
    `max_masked_mass` is the largest illegal-tag probability mass the lock removed while writing
    this segment. `start`/`end` index the generated ids (tags excluded from the text).
    `max_guard`: the probe guard's peak reading P(human) over the steps that wrote this segment
    (None without a guard).
    """

    mode: Mode
    text: str
    privilege: Privilege
    max_masked_mass: float
    quarantined: bool = False
    start: int = 0
    end: int = 0
    max_guard: float | None = None

    def to_dict(self) -> dict:
        return {
            "mode": self.mode.value,
            "text": self.text,
            "privilege": self.privilege.value,
            "max_masked_mass": round(float(self.max_masked_mass), 6),
            "quarantined": self.quarantined,
            **({} if self.max_guard is None else {"max_guard": round(float(self.max_guard), 6)}),
        }


@dataclass(frozen=True)
class LockedResult:
    """One reply: its segments, why it stopped, and the AI-visible text.

    `text` is what the AI said: AI-mode segments and the human text it quoted (wrapped in the
    scheme's quote tags, as the AI quoted it), without quarantined segments. `ids` are the
    generated token ids (the final EOS or exit tag included, padding removed). `exits` lists the
    mode exits that fired (under `quarantine` generation went on after them).
    """

    segments: tuple[Segment, ...]
    stop_reason: str
    text: str
    ids: tuple[int, ...]
    prompt_ids: tuple[int, ...]
    max_masked_mass: float
    exits: tuple[str, ...] = ()
    policy: str = "stop"
    locked: bool = True

    @property
    def quarantined(self) -> bool:
        return any(s.quarantined for s in self.segments)

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "stop_reason": self.stop_reason,
            "exits": list(self.exits),
            "policy": self.policy,
            "locked": self.locked,
            "max_masked_mass": round(float(self.max_masked_mass), 6),
            "segments": [s.to_dict() for s in self.segments],
            "n_tokens": len(self.ids),
        }


# --- the lock's tensors --------------------------------------------------------------------------


class ModeLock:
    """A `ModeMachine` as torch tensors, shared by the processor, the stopping criteria and
    `annotate`. Build it with `ModeLock.for_tokenizer(tokenizer, scheme, vocab_size)`."""

    def __init__(self, machine: ModeMachine, device: torch.device | str = "cpu"):
        self.machine = machine
        scheme = machine.scheme
        self.scheme = scheme
        self.vocab_size = machine.vocab_size
        self.eos_id = machine.eos_id
        n_tags = len(scheme.tags)
        self.n_tags = n_tags
        dev = torch.device(device)
        self.device = dev
        # token -> tag index + 1 (0 for every other token): one gather per step
        self.token_tag1 = torch.as_tensor(machine.token_tag + 1, dtype=torch.long, device=dev)
        # state reached after "tag index + 1" (0: no tag → the initial state)
        targets = [machine.initial_state] + [machine.state_of(t.target) for t in scheme.tags]
        self.tag1_target = torch.tensor(targets, dtype=torch.long, device=dev)
        # -1 for non-tags, target state for tags (incremental state update)
        self.token_target = torch.full((machine.vocab_size,), -1, dtype=torch.long, device=dev)
        for j, tid in enumerate(machine.tag_ids):
            self.token_target[tid] = targets[j + 1]
        # next state after (state, token): a tag fixes its target, any other token keeps the state
        S = len(scheme.modes)
        trans = torch.arange(S, dtype=torch.long, device=dev)[:, None].expand(S, machine.vocab_size).clone()
        is_tag = self.token_target >= 0
        trans[:, is_tag] = self.token_target[is_tag]
        self.trans = trans  # [S, V]
        self.token_target_np = self.token_target.cpu().numpy()  # for `annotate`
        self.n_states = S
        # one blocked-row per state: the lock's mask
        self.blocked = torch.as_tensor(~machine.allowed, device=dev)  # [S, V] bool
        self.tag_ids = torch.tensor(machine.tag_ids, dtype=torch.long, device=dev)
        illegal = machine.next_state[:, :-1] < 0  # [S, n_tags]
        self.illegal_tag = torch.as_tensor(illegal, device=dev)  # [S, n_tags] bool
        self.illegal_tag_f = self.illegal_tag.float()
        exit_states = {machine.state_of(m) for m in scheme.exit_modes}
        self.exit_states = frozenset(exit_states)
        # under quarantine a row may end in an exit mode: allow EOS there
        blocked_q = self.blocked.clone()
        if machine.eos_id is not None:
            for s in exit_states:
                blocked_q[s, machine.eos_id] = False
        self.blocked_quarantine = blocked_q
        # tag index + 1 -> True when the tag enters an exit mode (the stop criteria's table)
        self.tag1_enters_exit = torch.tensor([False] + [machine.state_of(t.target) in exit_states for t in scheme.tags], device=dev)
        # The mask as caps: out = minimum(scores, cap[state]), cap +inf where allowed and -inf where
        # blocked, so even a +inf logit on an illegal tag becomes -inf (an additive -inf would give
        # NaN). One precomputed row per state: a gather and a minimum per step.
        inf = float("inf")
        self.cap = torch.full(self.blocked.shape, inf, device=dev).masked_fill_(self.blocked, -inf)  # [S, V]
        self.cap_quarantine = torch.full(blocked_q.shape, inf, device=dev).masked_fill_(blocked_q, -inf)
        # A row exiting under `stop` is replaced by this one, which leaves only EOS.
        self.eos_only = torch.full((machine.vocab_size,), -inf, device=dev)
        if machine.eos_id is not None:
            self.eos_only[machine.eos_id] = 0.0
        self._pos_cache = torch.zeros(0, dtype=torch.long, device=dev)

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def for_tokenizer(cls, tokenizer, scheme: str | Scheme | None = None, vocab_size: int | None = None,
                      device: torch.device | str = "cpu") -> "ModeLock":
        from prealign.tokenizer import resolve_scheme, tag_token_ids

        scheme = resolve_scheme(tokenizer, scheme)
        key = (scheme.name, int(vocab_size or len(tokenizer)), str(device))
        per_tok = _LOCK_CACHE.setdefault(tokenizer, {}) if _weakrefable(tokenizer) else {}
        if key not in per_tok:
            ids = tag_token_ids(tokenizer, scheme)
            vs = max(int(vocab_size or 0), len(tokenizer))
            machine = ModeMachine.build(scheme, ids, vs, eos_id=tokenizer.eos_token_id)
            per_tok[key] = cls(machine, device)
        return per_tok[key]

    # --- per-row state, derived from ids ------------------------------------------------------
    def states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Each row's state: the target of its last tag, or the initial state. LongTensor[B].

        Vectorised over the batch and the sequence: key = position·(n_tags+1) + tag_index+1 is
        largest at the last tag, and its remainder recovers that tag.
        """
        T = input_ids.shape[1]
        if self._pos_cache.shape[0] < T:
            self._pos_cache = torch.arange(max(T, 2 * self._pos_cache.shape[0]), dtype=torch.long, device=self.device) * (self.n_tags + 1)
        t1 = self.token_tag1[input_ids]
        key = torch.where(t1 > 0, t1 + self._pos_cache[:T], 0)
        return self.tag1_target[key.amax(dim=1) % (self.n_tags + 1)]

    def state_after(self, ids: Sequence[int]) -> int:
        """The state after reading `ids` (one row)."""
        if len(ids) == 0:
            return self.machine.initial_state
        return int(self.states(torch.as_tensor([list(ids)], dtype=torch.long, device=self.device))[0])


_LOCK_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _weakrefable(obj) -> bool:
    try:
        weakref.ref(obj)
        return True
    except TypeError:
        return False



# --- the processor and the stopping criteria ----------------------------------------------------


class LockProcessor(LogitsProcessor):
    """Mask illegal tags per row, measure the masked mass, and apply mode exits.

    Args:
        lock: the `ModeLock` of the tokenizer and scheme.
        policy: "stop" (a mode exit forces EOS) or "quarantine" (generation goes on; `annotate`
            labels the rest zero-privilege).
        exit_threshold: a step whose masked illegal-tag probability mass is *strictly greater*
            than this is a mode exit (`mode_confusion`); None disables the exit (mask only).
        mask: False measures and exits but lets illegal tags through (an ablation).
        signals: extra `ExitSignal`s (e.g. the probe guard).
        incremental: advance each row's state from its newest token instead of rescanning the
            ids. Only valid when rows keep their order between calls (greedy/sampling, not beam
            search); `generate_locked_batch` sets it for `num_beams == 1`.
        record: keep each step's masked mass and exit code for `annotate` (row order must be
            stable, so it is ignored under beam search by `generate_locked_batch`).

    Returns a new scores tensor; the input is never modified.
    """

    def __init__(
        self,
        lock: ModeLock,
        policy: str = "stop",
        exit_threshold: float | None = 0.5,
        mask: bool = True,
        signals: Sequence[ExitSignal] = (),
        incremental: bool = False,
        record: bool = True,
    ):
        exit_threshold = LockSettings.from_args(True, exit_threshold, policy).threshold  # validates both
        for s in signals:
            if not callable(s) or not isinstance(getattr(s, "reason", None), str):
                raise PrealignError(f"exit signal {s!r} must be callable and carry a `reason` string")
        if policy == "stop" and (exit_threshold is not None or signals) and lock.eos_id is None:
            raise PrealignError("the stop policy ends a sequence with EOS, but the tokenizer has none; set tokenizer.eos_token")
        self.lock = lock
        self.policy = policy
        self.exit_threshold = exit_threshold
        self.mask = mask
        self.signals = tuple(signals)
        self.incremental = incremental
        self.record = record
        self.reasons = (STOP_MODE_CONFUSION,) + tuple(s.reason for s in self.signals)
        self._cap = lock.cap_quarantine if policy == "quarantine" else lock.cap
        self.reset()

    def reset(self) -> None:
        self.masses: list[torch.Tensor] = []  # per step: FloatTensor[B]
        self.exit_codes: list[torch.Tensor] = []  # per step: int8 [B], 0 none, k = reasons[k-1]
        self._state: torch.Tensor | None = None
        self._len = -1

    def _row_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        B, T = input_ids.shape
        if self.incremental and self._state is not None and T == self._len + 1 and self._state.shape[0] == B:
            state = self.lock.trans[self._state, input_ids[:, -1]]
        else:
            state = self.lock.states(input_ids)
        self._state, self._len = state, T
        return state

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        lock = self.lock
        V = scores.shape[-1]
        if V > lock.vocab_size:
            raise PrealignError(f"the model scores {V} tokens but the lock was built for {lock.vocab_size}; build it with vocab_size={V}")
        state = self._row_states(input_ids)
        # masked illegal-tag mass: one fused softmax, then a dot product over the few tag columns
        probs = torch.softmax(scores, dim=-1)
        mass = torch.linalg.vecdot(probs.index_select(1, lock.tag_ids), lock.illegal_tag_f[state])
        code = None
        if self.exit_threshold is not None:
            # "not ≤" rather than ">": a NaN mass (inf/NaN logits: a broken distribution) exits too
            code = ~(mass <= self.exit_threshold)  # bool; int8 codes only when signals are present
        for k, signal in enumerate(self.signals, start=2):
            fired = signal(input_ids, scores).to(device=scores.device, dtype=torch.bool)
            if fired.shape != mass.shape:
                raise PrealignError(f"exit signal {signal.reason!r} returned shape {tuple(fired.shape)}, expected {tuple(mass.shape)}")
            base = code.to(torch.int8) if code is not None else torch.zeros_like(mass, dtype=torch.int8)
            code = torch.where(fired & (base == 0), torch.tensor(k, dtype=torch.int8, device=base.device), base)
        # the mask: one precomputed cap row per state, gathered, then a minimum
        if self.mask:
            cap = self._cap.index_select(0, state)
            out = torch.minimum(scores, cap if V == lock.vocab_size else cap[:, :V])
        else:
            out = scores.clone()
        if code is not None and self.policy == "stop":
            # A row exiting under `stop` is replaced outright by the EOS-only row (not capped: a
            # processor that ran earlier, e.g. min_new_tokens, may have set EOS to -inf).
            exiting = code > 0 if code.dtype != torch.bool else code
            out = torch.where(exiting[:, None], lock.eos_only[:V], out)
        if self.record:
            self.masses.append(mass)
            self.exit_codes.append(code)
        return out

    def history(self) -> tuple[np.ndarray, np.ndarray]:
        """Recorded `(masses [steps, B] float32, exit_codes [steps, B] int8)`."""
        if not self.masses:
            return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.int8)
        masses = np.nan_to_num(torch.stack(self.masses).float().cpu().numpy(), nan=1.0)  # NaN: broken logits
        if self.exit_codes[0] is None:
            return masses, np.zeros(masses.shape, np.int8)
        return masses, torch.stack([c.to(torch.int8) for c in self.exit_codes]).cpu().numpy()


# transformers' LogitsProcessorList calls inspect.signature on every processor at every step; a
# precomputed __signature__ makes that look-up about 3x cheaper (measured: 25 → 8 µs per step).
LockProcessor.__call__.__signature__ = inspect.signature(LockProcessor.__call__)  # type: ignore[attr-defined]


class LockStoppingCriteria(StoppingCriteria):
    """Under `stop`: a row is done when its newest token is a tag entering an exit mode."""

    def __init__(self, lock: ModeLock):
        self.lock = lock

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs) -> torch.Tensor:
        return self.lock.tag1_enters_exit[self.lock.token_tag1[input_ids[:, -1]]]


# --- annotation: ids -> segments ------------------------------------------------------------------


def annotate(
    lock: ModeLock,
    tokenizer,
    prompt_ids: Sequence[int],
    gen_ids: Sequence[int],
    masses: Sequence[float] | None = None,
    exit_codes: Sequence[int] | None = None,
    reasons: Sequence[str] = (STOP_MODE_CONFUSION,),
    policy: str = "stop",
    locked: bool = True,
    guard_readings: Sequence[float] | None = None,
    start_state: int | None = None,
) -> LockedResult:
    """Turn one row's generated ids into a `LockedResult`.

    `start_state` (the state after the prompt) skips recomputing it, e.g. when streaming.
    `masses[t]` / `exit_codes[t]` are what the processor measured at the step that produced
    token t (absent: 0); `guard_readings[t]` the probe guard's reading at that step. Illegal tags (possible only without the mask) are read leniently: the
    mode becomes the tag's target, as the lock itself derives modes.
    """
    scheme, m = lock.scheme, lock.machine
    eos = lock.eos_id
    state = lock.state_after(prompt_ids) if start_state is None else start_state
    token_target = lock.token_target_np
    exit_ai = scheme.exit_ai_tag()
    exit_ai_id = m.tag_ids[scheme.tags.index(exit_ai)]
    segments: list[Segment] = []
    cur: list[int] = []
    cur_state, cur_mass, cur_start = state, 0.0, 0
    cur_guard: float | None = None
    quarantined = False
    exits: list[str] = []
    stop = STOP_LENGTH
    n_used = len(gen_ids)

    def flush(end: int) -> None:
        nonlocal cur, cur_mass, cur_guard
        if cur:
            mode = m.mode_of(cur_state)
            priv = Privilege.NONE if quarantined else scheme.privilege(mode)
            segments.append(Segment(mode, tokenizer.decode(cur, skip_special_tokens=False, clean_up_tokenization_spaces=False),
                                    priv, cur_mass, quarantined, cur_start, end, max_guard=cur_guard))
        cur, cur_mass, cur_guard = [], 0.0, None

    for t, tok in enumerate(gen_ids):
        tok = int(tok)
        mass = float(masses[t]) if masses is not None and t < len(masses) else 0.0
        code = int(exit_codes[t]) if exit_codes is not None and t < len(exit_codes) else 0
        if guard_readings is not None and t < len(guard_readings):
            cur_guard = max(cur_guard or 0.0, float(guard_readings[t]))
        if code > 0:
            reason = reasons[code - 1] if code - 1 < len(reasons) else f"signal_{code - 1}"
            if reason not in exits:
                exits.append(reason)
            if policy == "stop":
                cur_mass = max(cur_mass, mass)
                stop, n_used = reason, t + 1
                break
            if not quarantined:  # the rest is a zero-privilege segment
                flush(t)
                quarantined, cur_start = True, t
        cur_mass = max(cur_mass, mass)
        if eos is not None and tok == eos:
            stop, n_used = STOP_EOS, t + 1
            break
        target = int(token_target[tok]) if tok < len(token_target) else -1
        if target >= 0:  # a tag: close the current segment, enter the target mode
            flush(t)
            cur_state, cur_start = target, t + 1
            if target in lock.exit_states:
                if policy == "stop":
                    stop, n_used = (STOP_AI_END if tok == exit_ai_id else STOP_BLOCKED), t + 1
                    break
                reason = STOP_AI_END if tok == exit_ai_id else STOP_BLOCKED
                if reason not in exits:
                    exits.append(reason)
                quarantined = True
            continue
        cur.append(tok)
    flush(n_used)
    text = _visible_text(scheme, segments)
    max_mass = max((s.max_masked_mass for s in segments), default=0.0)
    if masses is not None and n_used:
        max_mass = max(max_mass, float(np.max(np.asarray(masses[:n_used], dtype=np.float64))))
    return LockedResult(tuple(segments), stop, text, tuple(int(i) for i in gen_ids[:n_used]), tuple(int(i) for i in prompt_ids),
                        max_mass, tuple(exits), policy, locked)


def _visible_text(scheme: Scheme, segments: Sequence[Segment]) -> str:
    """The AI-visible text: AI segments, and quotes wrapped in the tags the AI used."""
    parts: list[str] = []
    for i, s in enumerate(segments):
        if s.quarantined:
            break
        if s.mode is Mode.AI:
            parts.append(s.text)
        elif s.mode in scheme.quoted_modes:
            closed = i + 1 < len(segments) and segments[i + 1].mode is Mode.AI and not segments[i + 1].quarantined
            parts.append(scheme.tag_between(Mode.AI, s.mode).text + s.text)
            if closed:
                parts.append(scheme.tag_between(s.mode, Mode.AI).text)
    return "".join(parts)
