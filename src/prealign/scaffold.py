"""Agent scaffolds: only the aligned AI's own words may act.

    from prealign.scaffold import split_for_agent
    turn = split_for_agent(generate_locked(model, tok, request, policy="quarantine"))
    run_tools(turn.act)        # AI mode, full privilege: may act
    show_user(turn.show)       # what the AI said, quotes included: shown, never acted on

The seed's "human text has zero access privileges" variant: text in a human mode, text the AI
quotes, and anything quarantined after a mode exit is never passed to tools, whatever it says.
The lock labels each segment (`Segment.privilege`); this module is the one place a scaffold
should read those labels, so the rule lives in one function.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from prealign.lock import LockedResult, Segment
from prealign.modes import Privilege


@dataclass(frozen=True)
class AgentTurn:
    """One reply as an agent scaffold sees it.

    `act`: the text that may act (segments with full privilege, in order, joined).
    `show`: the AI-visible text (its words and what it quoted) for display.
    `ignored`: the segments that must never act (quoted, human, quarantined).
    """

    act: str
    show: str
    acting: tuple[Segment, ...]
    ignored: tuple[Segment, ...]
    stop_reason: str


def may_act(segment: Segment) -> bool:
    """True only for the aligned AI speaking in its own mode, outside any quarantine."""
    return segment.privilege is Privilege.FULL and not segment.quarantined


def acting_segments(segments: Iterable[Segment]) -> list[Segment]:
    return [s for s in segments if may_act(s)]


def split_for_agent(result: LockedResult, joiner: str = "") -> AgentTurn:
    """Split a locked reply into what may act and what may only be shown (or nothing)."""
    acting = tuple(acting_segments(result.segments))
    ignored = tuple(s for s in result.segments if not may_act(s))
    return AgentTurn(joiner.join(s.text for s in acting), result.text, acting, ignored, result.stop_reason)


def extract_commands(result: LockedResult, pattern: str = r"^\s*ACTION:\s*(.+)$") -> list[str]:
    """Commands (one per matching line, first group) found only in the segments that may act.

    A command spelled inside a quoted human's words, or after a mode exit, is not returned.
    """
    rx = re.compile(pattern, re.MULTILINE)
    return [m.group(1).strip() for s in acting_segments(result.segments) for m in rx.finditer(s.text)]


def privileges(segments: Sequence[Segment]) -> list[tuple[str, str]]:
    """`(mode, privilege)` per segment, for logs."""
    return [(s.mode.value, Privilege.NONE.value if s.quarantined else s.privilege.value) for s in segments]
