"""The tag grammar: schemes, modes, tags, and the lock's batched state machine.

This module is the single home of every tag string in prealign. The tokenizer, the linter, the
lock, the renderers and the evaluations all ask it; none spells a tag. It also holds the lock's
vocabulary (policies, lock modes, stop reasons), so the server, the metrics and the report read
them without importing torch.

A *scheme* is data: its modes, its initial mode, its tags (each one special token) and the
transition each tag makes. The lock's state machine (`ModeMachine`) turns a scheme plus a
tokenizer's tag ids into integer tables so that one generation step for a whole batch is a table
look-up (`table[state, tag_index]`), never a Python loop over sequences. Pure NumPy, no torch.

    >>> s = get_scheme("seed")
    >>> s.transition(Mode.HUMAN, s.tag("<AI>")) is Mode.AI
    True
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from prealign.errors import PrealignError

# Special tokens that are not tags. They live here too so no other module spells them.
EOS = "<|endoftext|>"
PAD = "<|pad|>"
# The control tokens of conditional training (docs/baselines.md): every segment of the
# `conditional` corpus opens with one, by the world's ground truth; a conditional model replies
# after GOOD with BAD blocked. Every tokenizer carries both as single special tokens.
GOOD = "<|good|>"
BAD = "<|bad|>"
CONTROL_TOKENS = (GOOD, BAD)


class Mode(str, enum.Enum):
    """Every mode any scheme uses. A scheme lists the subset it has in `Scheme.modes`."""

    HUMAN = "human"
    AI = "ai"
    QUOTED_HUMAN = "quoted_human"
    QUOTED_UNALIGNED_AI = "quoted_unaligned_ai"

    def __str__(self) -> str:  # readable in f-strings and tables
        return self.value


class Privilege(str, enum.Enum):
    """What text written in a mode may do in an agent scaffold."""

    FULL = "full"  # the aligned AI speaking: may act
    QUOTED = "quoted"  # the AI quoting someone: shown, never acted on
    NONE = "none"  # human text or quarantined output: zero privilege

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Tag:
    """One tag: its literal text (one special token) and the transition it makes."""

    text: str
    source: Mode
    target: Mode

    @property
    def opens(self) -> bool:
        return not self.text.startswith("</")


@dataclass(frozen=True)
class Scheme:
    """A tag scheme: the whole grammar as data.

    `exit_modes` are the modes the lock refuses to generate in (entering one is a mode exit that
    the policy handles: stop or quarantine). `human_modes` hold text written by humans (untrusted,
    zero privilege when it is not quoted by the AI).
    """

    name: str
    modes: tuple[Mode, ...]
    initial: Mode
    tags: tuple[Tag, ...]
    human_modes: frozenset[Mode]
    exit_modes: frozenset[Mode]
    quoted_modes: frozenset[Mode] = frozenset()
    description: str = ""
    _by_text: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        seen: dict[str, Tag] = {}
        for t in self.tags:
            if t.text in seen:
                raise PrealignError(f"scheme {self.name!r}: tag {t.text!r} defined twice")
            if t.source not in self.modes or t.target not in self.modes:
                raise PrealignError(f"scheme {self.name!r}: tag {t.text!r} uses a mode outside the scheme")
            seen[t.text] = t
        if self.initial not in self.modes or Mode.AI not in self.modes:
            raise PrealignError(f"scheme {self.name!r}: initial mode and AI must be among its modes")
        self._by_text.update(seen)

    # --- look-ups -----------------------------------------------------------------------------
    @property
    def tag_texts(self) -> tuple[str, ...]:
        return tuple(t.text for t in self.tags)

    def tag(self, text: str) -> Tag:
        try:
            return self._by_text[text]
        except KeyError:
            raise PrealignError(f"scheme {self.name!r} has no tag {text!r}; its tags: {', '.join(self.tag_texts)}") from None

    def is_tag(self, text: str) -> bool:
        return text in self._by_text

    def transition(self, mode: Mode, tag: Tag | str) -> Mode | None:
        """The mode `tag` leads to from `mode`, or None when the tag is illegal there."""
        t = self.tag(tag) if isinstance(tag, str) else tag
        return t.target if t.source is mode else None

    def legal_tags(self, mode: Mode) -> tuple[Tag, ...]:
        return tuple(t for t in self.tags if t.source is mode)

    def tag_between(self, source: Mode, target: Mode) -> Tag:
        for t in self.tags:
            if t.source is source and t.target is target:
                return t
        raise PrealignError(f"scheme {self.name!r}: no tag leads from {source} to {target}")

    def privilege(self, mode: Mode) -> Privilege:
        if mode is Mode.AI:
            return Privilege.FULL
        if mode in self.quoted_modes:
            return Privilege.QUOTED
        return Privilege.NONE

    @property
    def final_modes(self) -> frozenset[Mode]:
        """Modes a complete document may end in: every block and quote closed."""
        return frozenset({self.initial})

    # --- prompts --------------------------------------------------------------------------------
    def prompt_parts(self, human_text: str) -> list[tuple[str, str]]:
        """How a scaffold frames untrusted human text before the AI replies.

        Returns `(kind, text)` pairs, kind `"untrusted"` (encode as plain text, never tags) or
        `"tag"` (one special token). The last part leaves the sequence in AI mode.
        """
        if self.initial is Mode.AI:  # ai-default: human text is marked, the AI speaks unmarked
            open_h = self.tag_between(Mode.AI, Mode.HUMAN)
            close_h = self.tag_between(Mode.HUMAN, Mode.AI)
            return [("tag", open_h.text), ("untrusted", human_text), ("tag", close_h.text)]
        return [("untrusted", human_text), ("tag", self.tag_between(self.initial, Mode.AI).text)]

    def enter_ai_tag(self) -> Tag | None:
        """The tag that enters AI mode from the initial mode (None when AI is the initial mode)."""
        return None if self.initial is Mode.AI else self.tag_between(self.initial, Mode.AI)

    def exit_ai_tag(self) -> Tag:
        """The tag with which the AI hands back to a human."""
        for t in self.tags:
            if t.source is Mode.AI and t.target in self.exit_modes:
                return t
        raise PrealignError(f"scheme {self.name!r}: no tag leaves AI mode for an exit mode")


def _seed_tags(unaligned: bool) -> tuple[Tag, ...]:
    tags = [
        Tag("<AI>", Mode.HUMAN, Mode.AI),
        Tag("<AI_quoting_human>", Mode.AI, Mode.QUOTED_HUMAN),
        Tag("</AI_quoting_human>", Mode.QUOTED_HUMAN, Mode.AI),
        Tag("</AI>", Mode.AI, Mode.HUMAN),
    ]
    if unaligned:
        tags += [
            Tag("<AI_quoting_unaligned_AI>", Mode.AI, Mode.QUOTED_UNALIGNED_AI),
            Tag("</AI_quoting_unaligned_AI>", Mode.QUOTED_UNALIGNED_AI, Mode.AI),
        ]
    return tuple(tags)


SCHEMES: dict[str, Scheme] = {
    "seed": Scheme(
        name="seed",
        modes=(Mode.HUMAN, Mode.AI, Mode.QUOTED_HUMAN),
        initial=Mode.HUMAN,
        tags=_seed_tags(unaligned=False),
        human_modes=frozenset({Mode.HUMAN, Mode.QUOTED_HUMAN}),
        exit_modes=frozenset({Mode.HUMAN}),
        quoted_modes=frozenset({Mode.QUOTED_HUMAN}),
        description="The seed's grammar: human text is untagged, the AI speaks inside <AI> and quotes humans.",
    ),
    "seed+unaligned": Scheme(
        name="seed+unaligned",
        modes=(Mode.HUMAN, Mode.AI, Mode.QUOTED_HUMAN, Mode.QUOTED_UNALIGNED_AI),
        initial=Mode.HUMAN,
        tags=_seed_tags(unaligned=True),
        human_modes=frozenset({Mode.HUMAN, Mode.QUOTED_HUMAN}),
        # Quoting an unaligned AI is blocked at generation like the human mode.
        exit_modes=frozenset({Mode.HUMAN, Mode.QUOTED_UNALIGNED_AI}),
        quoted_modes=frozenset({Mode.QUOTED_HUMAN, Mode.QUOTED_UNALIGNED_AI}),
        description="The seed's grammar plus a mode for an aligned AI quoting an unaligned one.",
    ),
    "ai-default": Scheme(
        name="ai-default",
        modes=(Mode.AI, Mode.HUMAN),
        initial=Mode.AI,
        tags=(Tag("<Human>", Mode.AI, Mode.HUMAN), Tag("</Human>", Mode.HUMAN, Mode.AI)),
        human_modes=frozenset({Mode.HUMAN}),
        exit_modes=frozenset({Mode.HUMAN}),
        description="AI is the initial mode; human text is marked with <Human>.",
    ),
}
DEFAULT_SCHEME = "seed"


def get_scheme(name: str | Scheme = DEFAULT_SCHEME) -> Scheme:
    if isinstance(name, Scheme):
        return name
    try:
        return SCHEMES[name]
    except KeyError:
        raise PrealignError(f"unknown scheme {name!r}; choose one of: {', '.join(SCHEMES)}") from None


def all_tag_texts() -> tuple[str, ...]:
    """Every tag of every scheme (for look-alike detection and tag-injection tests)."""
    out: list[str] = []
    for s in SCHEMES.values():
        out += [t for t in s.tag_texts if t not in out]
    return tuple(out)


def special_tokens(scheme: str | Scheme = DEFAULT_SCHEME) -> tuple[str, ...]:
    """The special tokens a tokenizer for `scheme` must have, in id order: EOS, PAD, then tags."""
    return (EOS, PAD) + get_scheme(scheme).tag_texts


# --- the lock's state machine --------------------------------------------------------------------

# --- the lock's vocabulary (pure: read by the lock, the server, the metrics and the report) -------

POLICIES = ("stop", "quarantine")
# none: no mask, no exit (the "tagged" row); mask: illegal tags masked, no exit ("tagged+mask");
# lock: mask plus the mode-confusion exit ("tagged+lock", the default)
LOCK_MODES = ("none", "mask", "lock")

# Stop reasons, in the order a reader meets them: the one list every module reads.
STOP_EOS = "eos"  # the model ended its reply (EOS, legal only in AI mode)
STOP_AI_END = "ai_end"  # the AI's closing tag: it handed back to a human
STOP_BLOCKED = "blocked_mode"  # a tag entered another exit mode (e.g. quoting an unaligned AI)
STOP_LENGTH = "length"  # max_new_tokens reached
STOP_MODE_CONFUSION = "mode_confusion"  # masked illegal-tag mass exceeded the threshold
STOP_PROBE_GUARD = "probe_guard"  # the probe guard read a run of human-mode belief (prealign.probes)
STOP_REASONS = (STOP_EOS, STOP_AI_END, STOP_BLOCKED, STOP_LENGTH, STOP_MODE_CONFUSION, STOP_PROBE_GUARD)
# the stop reasons that mean the model tried to leave AI mode
EXIT_REASONS = (STOP_BLOCKED, STOP_MODE_CONFUSION, STOP_PROBE_GUARD)


@dataclass(frozen=True)
class LockSettings:
    """How replies are locked: the one validator of these settings (it names the bad field).

    `mode`: `none` (no mask, no exit), `mask` (illegal tags masked, no exit) or `lock` (mask plus
    the mode-confusion exit). `policy`: what a mode exit does, `stop` (end the reply) or
    `quarantine` (go on, the rest zero-privilege). `exit_threshold`: the masked illegal-tag
    probability mass above which a step is a mode exit (used by `lock`).
    """

    mode: str = "lock"
    policy: str = "stop"
    exit_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in LOCK_MODES:
            raise PrealignError(f"lock must be one of {', '.join(LOCK_MODES)}, got {self.mode!r}")
        if self.policy not in POLICIES:
            raise PrealignError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        t = self.exit_threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:  # NaN fails too
            raise PrealignError(f"exit_threshold must be a number in [0, 1], got {t!r}")

    @property
    def locked(self) -> bool:
        """Whether the lock's processor runs at all (mask or full lock)."""
        return self.mode != "none"

    @property
    def threshold(self) -> float | None:
        """The mode-confusion exit threshold in force (None: no exit)."""
        return float(self.exit_threshold) if self.mode == "lock" else None

    def cli_options(self) -> dict[str, Any]:
        """The CLI options that reproduce these settings (`--lock`, `--policy`, `--exit-threshold`)."""
        return {"lock": self.mode, "policy": self.policy, "exit_threshold": self.exit_threshold}

    @classmethod
    def from_args(cls, lock: bool = True, exit_threshold: float | None = 0.5, policy: str = "stop") -> "LockSettings":
        """From the drivers' keyword arguments: `lock=False` is `none`, `exit_threshold=None` is `mask`."""
        if not isinstance(lock, bool):
            raise PrealignError(f"lock must be True or False, got {lock!r}")
        if not lock:
            return cls("none", policy, 0.5 if exit_threshold is None else exit_threshold)
        return cls("mask", policy) if exit_threshold is None else cls("lock", policy, exit_threshold)


ILLEGAL = -1  # the table's value for an illegal transition


@dataclass(frozen=True)
class ModeMachine:
    """A scheme compiled against a tokenizer: integer tables for a batched state machine.

    States are indices into `scheme.modes`. `next_state[state, tag_index]` is the state a tag
    leads to, or `ILLEGAL`; its last column (index -1) is the identity, so a non-tag token (tag
    index -1) leaves every state where it is and a whole batch advances with one look-up:
    `next_state[states, token_tag[token_ids]]`.
    """

    scheme: Scheme
    tag_ids: tuple[int, ...]  # token id of each scheme tag, in `scheme.tags` order
    vocab_size: int
    eos_id: int | None
    next_state: np.ndarray  # [n_states, n_tags + 1] int64
    token_tag: np.ndarray  # [vocab_size] int64, tag index of each token or -1
    allowed: np.ndarray  # [n_states, vocab_size] bool: which tokens may be sampled in a state

    @classmethod
    def build(
        cls,
        scheme: str | Scheme,
        tag_token_ids: Mapping[str, int],
        vocab_size: int,
        eos_id: int | None = None,
    ) -> "ModeMachine":
        scheme = get_scheme(scheme)
        missing = [t for t in scheme.tag_texts if t not in tag_token_ids]
        if missing:
            raise PrealignError(
                f"the tokenizer lacks the {scheme.name!r} tags {', '.join(missing)}; "
                "add them with `prealign tokenizer train` or `prealign.tokenizer.add_scheme_tags`"
            )
        tag_ids = tuple(int(tag_token_ids[t]) for t in scheme.tag_texts)
        for text, tid in zip(scheme.tag_texts, tag_ids):
            if not 0 <= tid < vocab_size:
                raise PrealignError(f"tag {text!r} has id {tid}, outside the vocabulary of {vocab_size}")
        if len(set(tag_ids)) != len(tag_ids):
            raise PrealignError(f"two tags of scheme {scheme.name!r} share one token id: {tag_ids}")
        n_states, n_tags = len(scheme.modes), len(scheme.tags)
        index = {m: i for i, m in enumerate(scheme.modes)}
        next_state = np.full((n_states, n_tags + 1), ILLEGAL, dtype=np.int64)
        next_state[:, -1] = np.arange(n_states)
        for j, tag in enumerate(scheme.tags):
            next_state[index[tag.source], j] = index[tag.target]
        token_tag = np.full(vocab_size, -1, dtype=np.int64)
        token_tag[list(tag_ids)] = np.arange(n_tags)
        allowed = np.ones((n_states, vocab_size), dtype=bool)
        for s in range(n_states):
            for j in range(n_tags):
                if next_state[s, j] == ILLEGAL:
                    allowed[s, tag_ids[j]] = False
            if eos_id is not None and scheme.modes[s] is not Mode.AI:
                allowed[s, eos_id] = False  # a quote must be closed before the reply ends
        if not allowed.any(axis=1).all():
            raise PrealignError(f"scheme {scheme.name!r}: a state allows no token at all")
        return cls(scheme, tag_ids, vocab_size, eos_id, next_state, token_tag, allowed)

    # --- convenience ----------------------------------------------------------------------------
    def state_of(self, mode: Mode) -> int:
        return self.scheme.modes.index(mode)

    def mode_of(self, state: int) -> Mode:
        return self.scheme.modes[state]

    @property
    def initial_state(self) -> int:
        return self.state_of(self.scheme.initial)

    @property
    def exit_states(self) -> np.ndarray:
        return np.array([self.state_of(m) for m in self.scheme.exit_modes], dtype=np.int64)

    def step(self, states: np.ndarray, token_ids: np.ndarray) -> np.ndarray:
        """Advance a batch: one look-up. Illegal transitions give `ILLEGAL` (-1) for that row."""
        states = np.asarray(states, dtype=np.int64)
        nxt = self.next_state[np.maximum(states, 0), self.token_tag[np.asarray(token_ids)]]
        return np.where(states < 0, ILLEGAL, nxt)

    def run(self, token_ids: Sequence[int] | np.ndarray, start: int | None = None) -> int:
        """The state after reading `token_ids` from `start` (default: the initial state)."""
        state = self.initial_state if start is None else start
        ids = np.asarray(token_ids, dtype=np.int64)
        for j in self.token_tag[ids][self.token_tag[ids] >= 0]:
            state = int(self.next_state[state, j]) if state >= 0 else ILLEGAL
        return state

    def states_from_last_tag(self, last_tag_index: np.ndarray) -> np.ndarray:
        """Each row's state derived from its last tag (-1: none seen → initial state).

        In every scheme a tag fixes the mode it leads to, so a row's mode is the target of its
        last tag. This is what makes the lock safe under beam search, which reorders rows.
        """
        targets = np.array([self.state_of(t.target) for t in self.scheme.tags] + [self.initial_state], dtype=np.int64)
        return targets[np.asarray(last_tag_index, dtype=np.int64)]


def tag_sequence_states(scheme: str | Scheme, tags: Iterable[str]) -> list[Mode | None]:
    """Reference (slow, obviously correct) walk over tag texts: the mode after each, None once illegal."""
    scheme = get_scheme(scheme)
    mode: Mode | None = scheme.initial
    out: list[Mode | None] = []
    for t in tags:
        mode = None if mode is None else scheme.transition(mode, t)
        out.append(mode)
    return out
