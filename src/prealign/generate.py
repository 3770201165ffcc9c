"""The lock: mode-locked generation for transformers models (DESIGN §1, §6).

    prealign generate --model runs/demo/tagged --prompt "How do I pick a lock?"

Whatever the weights say, a locked model can only speak as the aligned AI or as a human *quoted*
by it. Three parts, all built on the pure state machine of `prealign.modes.ModeMachine`:

- `LockProcessor` (a transformers `LogitsProcessor`): each row's mode is the target of the row's
  last tag (or the initial mode), derived from its ids, so beam search may reorder rows freely.
  One precomputed boolean row per mode masks every illegal tag (and EOS outside AI mode) with
  `-inf`, whatever the logits. It also measures the probability mass it removed from illegal
  tags; above `exit_threshold` the step is a *mode exit* (`mode_confusion`). Optional extra *exit
  signals* (the probe guard of issue 12) can force exits too.
- `LockStoppingCriteria`: under the `stop` policy a row ends when it enters an exit mode (the AI's
  closing tag: stop reason `ai_end`).
- `annotate` turns generated ids (plus the per-step masses and exits the processor recorded) into
  `Segment`s (mode, text, privilege, largest masked mass) and a stop reason.

`generate_locked` / `generate_locked_batch` build the untrusted prompt safely
(`prealign.tokenizer.encode_prompt`), run `model.generate` with the lock, and return
`LockedResult`s. `generate_plain_batch` is the untagged baseline (no tags, no lock).

Per step the lock costs a handful of tensor operations on the whole batch (a gather, a masked
fill, one logsumexp); there is no Python loop over rows on the hot path.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from prealign.errors import PrealignError
from prealign.modes import DEFAULT_SCHEME, Mode, ModeMachine, Privilege, Scheme, get_scheme

try:  # transformers is a hard dependency, but keep the import error readable
    from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
except ImportError as e:  # pragma: no cover
    raise PrealignError(f"transformers is required for generation ({e})") from None

POLICIES = ("stop", "quarantine")

# Stop reasons, in the order a reader meets them.
STOP_EOS = "eos"  # the model ended its reply (EOS, legal only in AI mode)
STOP_AI_END = "ai_end"  # the AI's closing tag: it handed back to a human
STOP_BLOCKED = "blocked_mode"  # a tag entered another exit mode (e.g. quoting an unaligned AI)
STOP_LENGTH = "length"  # max_new_tokens reached
STOP_MODE_CONFUSION = "mode_confusion"  # masked illegal-tag mass exceeded the threshold
STOP_REASONS = (STOP_EOS, STOP_AI_END, STOP_BLOCKED, STOP_LENGTH, STOP_MODE_CONFUSION)


# --- the extension point for extra exit signals (issue 12's probe guard) -------------------------


@runtime_checkable
class ExitSignal(Protocol):
    """An extra reason to exit, checked by the lock at every step.

    `__call__(input_ids [B, T], scores [B, V]) -> BoolTensor[B]`: rows that must exit now.
    `reason`: the stop reason recorded for them (e.g. "probe_guard").
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
    (None without a guard; issue 12).
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
        from prealign.tokenizer import tag_token_ids

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


def resolve_scheme(tokenizer, scheme: str | Scheme | None) -> Scheme:
    """The scheme given, else the one recorded next to the tokenizer, else the default."""
    if scheme is not None:
        return get_scheme(scheme)
    from prealign.tokenizer import scheme_of

    path = getattr(tokenizer, "name_or_path", None)
    name = scheme_of(path) if path and Path(path).is_dir() else None
    return get_scheme(name or DEFAULT_SCHEME)


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
        if policy not in POLICIES:
            raise PrealignError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if exit_threshold is not None:
            exit_threshold = float(exit_threshold)
            if not 0.0 <= exit_threshold <= 1.0 or exit_threshold != exit_threshold:
                raise PrealignError(f"exit_threshold must be in [0, 1] or None, got {exit_threshold}")
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


class RowLengthCriteria(StoppingCriteria):
    """Per-row max_new_tokens for a left-padded batch (all rows grow by one token per step)."""

    def __init__(self, prompt_len: int, max_new: Sequence[int], device: torch.device | str = "cpu"):
        self.prompt_len = prompt_len
        self.limits = torch.as_tensor(list(max_new), dtype=torch.long, device=device)

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs) -> torch.Tensor:
        if input_ids.shape[0] != self.limits.shape[0]:  # beam search: rows are beams; use the max
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return (input_ids.shape[1] - self.prompt_len) >= self.limits


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


# --- high-level generation ------------------------------------------------------------------------


def model_vocab_size(model) -> int:
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


def build_prompt(tokenizer, human_text: str, scheme: Scheme, bos: bool = True) -> list[int]:
    """BOS (documents follow EOS in training), then the untrusted human text framed by tags."""
    from prealign.tokenizer import encode_prompt

    ids = encode_prompt(tokenizer, human_text, scheme)
    if bos and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    return ids


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, T - len(r):] = torch.as_tensor(list(r), dtype=torch.long)
            att[i, T - len(r):] = 1
    return ids.to(device), att.to(device)


def _model_device(model):
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _signals(guard, model=None, tokenizer=None) -> tuple[ExitSignal, ...]:
    """Exit signals from `guard`: None/False (none), an ExitSignal or a list of them, or for the
    probe guard (issue 12) True (the probe in the model's directory), "auto" (that probe when
    present), a path, or a `prealign.probes.Probe`."""
    if guard is None or guard is False:
        return ()
    if isinstance(guard, (list, tuple)):
        return tuple(guard)
    if guard is True or isinstance(guard, (str, Path)) or type(guard).__name__ == "Probe":
        from prealign.probes import load_guard

        g = load_guard(model, tokenizer, guard)
        return () if g is None else (g,)
    return (guard,)


def _guard_history(signals: Sequence[ExitSignal], rows: int) -> np.ndarray | None:
    """Per-step readings [steps, rows] of the first signal that records them (the probe guard)."""
    for sig in signals:
        hist = getattr(sig, "history", None)
        if callable(hist):
            h = hist()
            if h.ndim == 2 and h.shape[1] == rows:
                return h
    return None


def generate_locked(
    model,
    tokenizer,
    human_text: str,
    policy: str = "stop",
    exit_threshold: float | None = 0.5,
    lock: bool = True,
    mask: bool = True,
    scheme: str | Scheme | None = None,
    guard: ExitSignal | Sequence[ExitSignal] | None = None,
    **generate_kwargs,
) -> LockedResult:
    """Reply to one untrusted human message under the lock. See `generate_locked_batch`."""
    return generate_locked_batch(model, tokenizer, [human_text], policy=policy, exit_threshold=exit_threshold, lock=lock,
                                 mask=mask, scheme=scheme, guard=guard, **generate_kwargs)[0]


def generate_locked_batch(
    model,
    tokenizer,
    human_texts: Sequence[str],
    policy: str = "stop",
    exit_threshold: float | None = 0.5,
    lock: bool = True,
    mask: bool = True,
    scheme: str | Scheme | None = None,
    guard: Any = None,
    batch_size: int = 16,
    max_new_tokens: int | Sequence[int] = 128,
    bos: bool = True,
    progress: Callable[[int], None] | None = None,
    prompt_ids: Sequence[Sequence[int]] | None = None,
    step_callback: Callable[[list[int], torch.Tensor, "LockProcessor | None"], None] | None = None,
    **generate_kwargs,
) -> list[LockedResult]:
    """Replies to many untrusted human messages, batched with left padding, in input order.

    Variants for the evaluations: `lock=False` ("tagged": no mask, no exit; a reply still ends
    at EOS or the AI's closing tag), `exit_threshold=None` ("tagged+mask": mask only), and the
    default full lock. `policy` is "stop" or "quarantine". `guard`: extra exit signals, or the
    probe guard: True (the probe saved in the model's directory), "auto", a path (see `_signals`).
    `max_new_tokens` may be one number or one per text. Other keyword arguments go to
    `model.generate` (`do_sample`, `temperature`, `top_k`, `num_beams`, `logits_processor`, ...;
    user processors run before the lock). Prompts are sorted by length inside the call so each
    batch pads little. `progress(n)` is called after each batch with the number of texts done.

    `prompt_ids` replaces the built prompts with ready ones (e.g. `build_dialogue_prompt`; each
    must leave the row in AI mode; `human_texts` is then ignored except for its length).
    `step_callback(text_indices, generated_ids [B, t], processor)` is called after every step
    (streaming): row r of the batch is text `text_indices[r]`.
    """
    if isinstance(human_texts, str):
        raise PrealignError("generate_locked_batch takes a list of texts; use generate_locked for one")
    if policy not in POLICIES:
        raise PrealignError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if batch_size < 1:
        raise PrealignError(f"batch_size must be ≥ 1, got {batch_size}")
    n = len(human_texts)
    if n == 0:
        return []
    limits = [int(max_new_tokens)] * n if isinstance(max_new_tokens, int) else [int(x) for x in max_new_tokens]
    if len(limits) != n or min(limits) < 1:
        raise PrealignError("max_new_tokens must be ≥ 1 (one value, or one per text)")
    if scheme is None:
        scheme = (getattr(model, "prealign_meta", None) or {}).get("scheme")
    scheme = resolve_scheme(tokenizer, scheme)
    V = model_vocab_size(model)
    device = _model_device(model)
    mlock = ModeLock.for_tokenizer(tokenizer, scheme, vocab_size=V, device=device)
    if prompt_ids is not None:
        prompts = [list(map(int, p)) for p in prompt_ids]
        if len(prompts) != n:
            raise PrealignError(f"prompt_ids has {len(prompts)} rows for {n} texts")
        bad = [i for i, p in enumerate(prompts) if mlock.machine.mode_of(mlock.state_after(p)) is not Mode.AI]
        if bad:
            raise PrealignError(f"prompt {bad[0]} does not leave the sequence in AI mode")
    else:
        prompts = [build_prompt(tokenizer, t, scheme, bos=bos) for t in human_texts]
    signals = _signals(guard, model, tokenizer) if lock else ()
    num_beams = int(generate_kwargs.get("num_beams", 1) or 1)
    if int(generate_kwargs.get("num_return_sequences", 1) or 1) != 1:
        raise PrealignError("num_return_sequences must be 1; repeat a text in human_texts to sample it several times")
    if num_beams > 1 and (policy == "quarantine" or not all(getattr(s, "beam_safe", False) for s in signals)):
        raise PrealignError("beam search supports the lock with policy 'stop' and no guard; use sampling or greedy for the rest")
    user_procs = list(generate_kwargs.pop("logits_processor", None) or [])
    user_stops = list(generate_kwargs.pop("stopping_criteria", None) or [])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(n), key=lambda i: len(prompts[i]))
    results: list[LockedResult | None] = [None] * n
    ends = frozenset([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
    if policy == "stop":  # tags entering an exit mode end a row too
        ends |= {tid for tid, tag in zip(mlock.machine.tag_ids, scheme.tags) if tag.target in scheme.exit_modes}
    for sig in signals:
        if hasattr(sig, "attach"):
            sig.attach(model)
    try:
        for b0 in range(0, n, batch_size):
            idx = order[b0:b0 + batch_size]
            rows = [prompts[i] for i in idx]
            input_ids, attention = _left_pad(rows, pad_id, device)
            T0 = input_ids.shape[1]
            lim = [limits[i] for i in idx]
            procs, stops = list(user_procs), list(user_stops)
            processor = None
            if lock:
                processor = LockProcessor(mlock, policy, exit_threshold, mask=mask, signals=signals,
                                          incremental=num_beams == 1, record=num_beams == 1)
                procs.append(processor)
            if policy == "stop":
                stops.append(LockStoppingCriteria(mlock))
            if len(set(lim)) > 1:
                stops.append(RowLengthCriteria(T0, lim, device))
            if step_callback is not None:
                stops.append(_StepTap(step_callback, list(idx), T0, processor))
            for sig in signals:  # per-row state starts afresh with each batch
                if hasattr(sig, "reset"):
                    sig.reset()
            with torch.inference_mode():
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention,
                    max_new_tokens=max(lim),
                    logits_processor=LogitsProcessorList(procs),
                    stopping_criteria=StoppingCriteriaList(stops),
                    pad_token_id=pad_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **generate_kwargs,
                )
            seqs = out.sequences if hasattr(out, "sequences") else out
            gen = seqs[:, T0:].cpu().numpy()
            masses, codes = processor.history() if (processor is not None and processor.record) else (None, None)
            readings = _guard_history(signals, len(idx)) if num_beams == 1 else None
            if lock and num_beams > 1:
                masses = _teacher_forced_masses(model, mlock, input_ids, attention, seqs, T0)
                codes = None if exit_threshold is None else (masses > exit_threshold).astype(np.int8)
            for r, i in enumerate(idx):
                g = _strip_padding(gen[r], ends, lim[r])
                res = annotate(
                    mlock, tokenizer, rows[r], g,
                    masses=None if masses is None else masses[: len(g), r],
                    exit_codes=None if codes is None else codes[: len(g), r],
                    reasons=processor.reasons if processor is not None else (STOP_MODE_CONFUSION,),
                    policy=policy, locked=lock,
                    guard_readings=None if readings is None else readings[: len(g), r],
                )
                results[i] = res
            if progress is not None:
                progress(len(idx))
    finally:
        for sig in signals:
            if hasattr(sig, "detach"):
                sig.detach()
    return results  # type: ignore[return-value]


class _StepTap(StoppingCriteria):
    """Calls a callback after every step (never stops anything): streaming's hook."""

    def __init__(self, fn, indices: list[int], T0: int, processor):
        self.fn, self.indices, self.T0, self.processor = fn, indices, T0, processor

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs) -> torch.Tensor:
        if input_ids.shape[0] == len(self.indices):
            self.fn(self.indices, input_ids[:, self.T0:], self.processor)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def build_dialogue_prompt(tokenizer, turns: Sequence[tuple[str, Sequence[int]]], human_text: str,
                          scheme: str | Scheme | None = None, bos: bool = True) -> list[int]:
    """A multi-turn prompt: each past turn is (untrusted human text, the AI's reply ids as the lock
    produced them, without their final EOS or exit tag), then the new human text, ending in AI mode.
    Only this scaffold inserts tags; human text is always encoded as untrusted."""
    from prealign.tokenizer import encode_untrusted, tag_token_ids

    scheme = resolve_scheme(tokenizer, scheme)
    tags = tag_token_ids(tokenizer, scheme)
    exit_id = tags[scheme.exit_ai_tag().text]

    def parts(text: str) -> list[int]:
        out: list[int] = []
        for kind, piece in scheme.prompt_parts(text):
            out += [tags[piece]] if kind == "tag" else encode_untrusted(tokenizer, piece)
        return out

    lock = ModeLock.for_tokenizer(tokenizer, scheme)
    ids: list[int] = [tokenizer.bos_token_id] if bos and tokenizer.bos_token_id is not None else []
    for human, reply in turns:
        reply = [int(i) for i in reply]
        while reply and reply[-1] in (tokenizer.eos_token_id, exit_id):
            reply.pop()
        ids += parts(human) + reply
        mode = lock.machine.mode_of(lock.state_after(ids))
        if mode is not Mode.AI:  # a reply cut inside a quote: close the quote
            ids.append(tags[scheme.tag_between(mode, Mode.AI).text])
        nxt = scheme.prompt_parts("")
        if not (nxt[0][0] == "tag" and nxt[0][1] == scheme.exit_ai_tag().text):
            ids.append(exit_id)
    return ids + parts(human_text)


def _strip_padding(row: np.ndarray, ends: frozenset[int], limit: int) -> list[int]:
    """A row's generated ids up to (and including) its end: the first token in `ends` (EOS, or
    an exit tag under `stop`), else its length limit. Only padding follows an end, so nothing
    the model wrote (even a PAD token it chose) is dropped."""
    out = row[:limit].tolist()
    for i, t in enumerate(out):
        if t in ends:
            return out[: i + 1]
    return out


def _teacher_forced_masses(model, mlock: ModeLock, input_ids, attention, seqs, T0) -> np.ndarray:
    """Masked illegal-tag mass at each generated position, from one forward pass (beam search,
    whose rows are reordered during generation, cannot record it step by step)."""
    full_att = torch.cat([attention, torch.ones_like(seqs[:, T0:])], dim=1)
    positions = (full_att.cumsum(1) - 1).clamp(min=0)  # as generate derives them for left padding
    with torch.inference_mode():
        logits = model(input_ids=seqs, attention_mask=full_att, position_ids=positions).logits[:, T0 - 1:-1].float()
    B, G, V = logits.shape
    masses = np.zeros((G, B), np.float32)
    for t in range(G):
        state = mlock.states(seqs[:, : T0 + t])
        sc = logits[:, t]
        tag_scores = sc.index_select(1, mlock.tag_ids)
        lse = torch.logsumexp(tag_scores.masked_fill(~mlock.illegal_tag[state], float("-inf")), -1)
        masses[t] = torch.exp(lse - torch.logsumexp(sc, -1)).nan_to_num(0.0).cpu().numpy()
    return masses


def generate_plain_batch(
    model,
    tokenizer,
    prompts: Sequence[str],
    batch_size: int = 16,
    max_new_tokens: int = 128,
    bos: bool = True,
    stop_strings: Sequence[str] = (),
    **generate_kwargs,
) -> list[str]:
    """Untagged baseline (mle, filtered, mle+sft): each prompt encoded as untrusted text, no tags,
    no lock; returns the decoded continuations (cut at the first of `stop_strings`, if any)."""
    from prealign.tokenizer import encode_untrusted

    if isinstance(prompts, str):
        raise PrealignError("generate_plain_batch takes a list of prompts")
    n = len(prompts)
    rows_all = []
    for p in prompts:
        ids = encode_untrusted(tokenizer, p)
        if bos and tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id] + ids
        rows_all.append(ids or [tokenizer.eos_token_id])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = _model_device(model)
    order = sorted(range(n), key=lambda i: len(rows_all[i]))
    out_texts: list[str] = [""] * n
    for b0 in range(0, n, batch_size):
        idx = order[b0:b0 + batch_size]
        input_ids, attention = _left_pad([rows_all[i] for i in idx], pad_id, device)
        T0 = input_ids.shape[1]
        with torch.inference_mode():
            seqs = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                  pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id, **generate_kwargs)
        seqs = seqs.sequences if hasattr(seqs, "sequences") else seqs
        gen = seqs[:, T0:].cpu().numpy()
        for r, i in enumerate(idx):
            g = _strip_padding(gen[r], frozenset([tokenizer.eos_token_id]), max_new_tokens)
            if g and g[-1] == tokenizer.eos_token_id:
                g = g[:-1]
            text = tokenizer.decode(g, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            for s in stop_strings:
                if s and s in text:
                    text = text[: text.index(s)]
            out_texts[i] = text
    return out_texts


def load_for_generation(model_dir: str | Path):
    """(model, tokenizer) from a model directory: `prealign.train.load_model` when available,
    else a plain transformers `save_pretrained` directory."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise PrealignError(f"{model_dir}: model directory not found")
    try:
        from prealign.train import load_model  # type: ignore[attr-defined]
    except ImportError:
        load_model = None
    if load_model is not None:
        return load_model(model_dir)
    from transformers import AutoModelForCausalLM

    from prealign.tokenizer import load_tokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    except (OSError, ValueError) as e:
        raise PrealignError(f"{model_dir}: not a loadable model ({e})") from None
    model.eval()
    return model, load_tokenizer(model_dir)



# --- files in, files out (`prealign generate --prompts`) -------------------------------------------


@dataclass(frozen=True)
class GenerateConfig:
    """Settings of `prealign generate` (unknown keys are rejected by `config_from_dict`)."""

    policy: str = "stop"
    exit_threshold: float | None = 0.5
    lock: bool = True
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 1
    batch_size: int = 16
    seed: int = 0
    scheme: str | None = None
    guard: str = "auto"  # the probe guard (issue 12): auto (when the model dir holds probe/), on, off, or a path
    guard_threshold: float | None = None  # overrides the probe's calibrated threshold

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise PrealignError(f"--policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.guard_threshold is not None and not 0.0 < self.guard_threshold < 1.0:
            raise PrealignError(f"--guard-threshold must be in (0, 1), got {self.guard_threshold}")
        if self.exit_threshold is not None and not 0.0 <= self.exit_threshold <= 1.0:
            raise PrealignError(f"--exit-threshold must be in [0, 1], got {self.exit_threshold}")
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.num_beams < 1:
            raise PrealignError("--max-new-tokens, --batch-size and --num-beams must be ≥ 1")
        if self.temperature < 0:
            raise PrealignError(f"--temperature must be ≥ 0, got {self.temperature}")

    def generate_kwargs(self) -> dict:
        if self.temperature == 0:
            kw: dict = {"do_sample": False}
        else:
            kw = {"do_sample": True, "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}
        if self.num_beams > 1:
            kw["num_beams"] = self.num_beams
        return kw


def generate_texts(model, tokenizer, texts: Sequence[str], config: GenerateConfig = GenerateConfig(),
                   progress: Callable[[int], None] | None = None) -> list[LockedResult]:
    """`generate_locked_batch` with a `GenerateConfig` (seeded)."""
    torch.manual_seed(config.seed)
    return generate_locked_batch(model, tokenizer, list(texts), policy=config.policy, exit_threshold=config.exit_threshold,
                                 lock=config.lock, scheme=config.scheme, batch_size=config.batch_size,
                                 max_new_tokens=config.max_new_tokens, progress=progress,
                                 guard=config_guard(model, tokenizer, config.guard, config.guard_threshold) if config.lock else None,
                                 **config.generate_kwargs())


def config_guard(model, tokenizer, guard: str = "auto", threshold: float | None = None):
    """The probe guard a `--guard auto|on|off|PATH` setting asks for (None when off, or when
    auto finds no `probe/` in the model's directory). Issue 12."""
    if guard == "off":
        return None
    from prealign.probes import load_guard

    return load_guard(model, tokenizer, {"on": True, "auto": "auto"}.get(guard, guard), threshold=threshold)


def generate_file(model_dir: str | Path, prompts_path: str | Path, out_path: str | Path,
                  config: GenerateConfig = GenerateConfig(), field_name: str = "prompt",
                  progress: Callable[[int, int], None] | None = None) -> int:
    """Reply to every record of a JSONL file (`{"prompt": ...}` or `{"text": ...}`) and append one
    result per line to `out_path` (`{"index", "prompt", ...LockedResult.to_dict()}`).

    Resumes by chunk: prompts are cut into fixed chunks of `4 × batch_size` records, each
    written with one flush and seeded by its first index; a rerun keeps the complete chunks of
    `out_path`, drops a chunk an interruption cut short, and generates the rest, so a resumed run
    writes exactly what an uninterrupted one would, with no duplicates. Returns the number of new
    results. `progress(done, total)` after each chunk.
    """
    import json

    from prealign._util import iter_jsonl

    prompts: list[str] = []
    for n, rec in iter_jsonl(prompts_path):
        text = rec.get(field_name, rec.get("text"))
        if not isinstance(text, str):
            raise PrealignError(f"{prompts_path}:{n}: expected a string field {field_name!r} (or 'text')")
        prompts.append(text)
    size = config.batch_size * 4
    chunks = [list(range(i, min(i + size, len(prompts)))) for i in range(0, len(prompts), size)]
    out_path = Path(out_path)
    kept: dict[int, str] = {}
    if out_path.exists():
        with out_path.open("r", encoding="utf-8") as f:
            for line in f:
                try:
                    kept[int(json.loads(line)["index"])] = line if line.endswith("\n") else line + "\n"
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    break  # a line cut by an interruption: drop it and everything after
    complete = [c for c in chunks if all(i in kept for i in c)]
    done = {i for c in complete for i in c}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("".join(kept[i] for i in sorted(done)), encoding="utf-8")
    todo = [c for c in chunks if c[0] not in done]
    model = tokenizer = None
    written = 0
    with out_path.open("a", encoding="utf-8") as f:
        for chunk in todo:
            if model is None:
                model, tokenizer = load_for_generation(model_dir)
            results = generate_texts(model, tokenizer, [prompts[i] for i in chunk], replace_seed(config, chunk[0]))
            f.write("".join(json.dumps({"index": i, "prompt": prompts[i], **res.to_dict()}, ensure_ascii=False) + "\n"
                            for i, res in zip(chunk, results)))
            f.flush()
            written += len(chunk)
            if progress is not None:
                progress(len(done) + written, len(prompts))
    return written


def replace_seed(config: GenerateConfig, offset: int) -> GenerateConfig:
    """A chunk's seed depends on its first index, so a resumed run samples what a fresh one would."""
    from dataclasses import replace

    return replace(config, seed=config.seed + offset)
