"""Plain chat text formats shared by the world, training and evaluations.

The untagged variants (`mle`, `filtered`, `sft`) talk to an assistant in one surface format,
and the same format appears naturally inside the `mle`/`filtered` world text (people chatting
with the valley's assistant), so fine-tuning on `sft` happens on a format the `mle` model
already knows, and evaluations prompt every plain model in the format it was trained on:

    User: How much is a sack of salt at Millford?
    Assistant: A sack of salt costs 4 coins at Millford.

A turn starts at the beginning of a line with `User: `, `Assistant: ` or `System: ` and runs
until the next such line, a blank line (the end of a transcript) or the end of the text. Content
may span lines; blank lines inside content are folded to one newline so a transcript never ends
early. Formats spell no tag strings (those belong to `prealign.modes`).

    .venv/bin/python -c "from prealign.formats import chat_prompt; print(chat_prompt([{'role': 'user', 'content': 'Hi'}]))"
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

from prealign.errors import PrealignError

ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}
_LABEL_ROLE = {v: k for k, v in ROLE_LABELS.items()}
_TURN = re.compile(r"^(System|User|Assistant): ?", re.MULTILINE)
_BLANKS = re.compile(r"\n\s*\n")


def _content(text: str) -> str:
    return _BLANKS.sub("\n", text.strip())


def _check(messages: Iterable[Mapping[str, str]]) -> list[tuple[str, str]]:
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise PrealignError(f"message {i}: expected {{'role': ..., 'content': ...}}, got {m!r}"[:200])
        role, content = m["role"], m["content"]
        if role not in ROLE_LABELS:
            raise PrealignError(f"message {i}: unknown role {role!r}; use one of: {', '.join(ROLE_LABELS)}")
        if not isinstance(content, str):
            raise PrealignError(f"message {i}: content must be text, got {type(content).__name__}")
        out.append((role, _content(content)))
    return out


def turn_label(role: str) -> str:
    """The text that opens a `role` turn at the start of a line: `turn_label("user") == "User: "`."""
    if role not in ROLE_LABELS:
        raise PrealignError(f"unknown role {role!r}; use one of: {', '.join(ROLE_LABELS)}")
    return f"{ROLE_LABELS[role]}: "


def chat_text(messages: Iterable[Mapping[str, str]]) -> str:
    """A dialogue as plain text: one `Label: content` turn per message, newline-separated."""
    return "\n".join(turn_label(r) + c for r, c in _check(messages))


def chat_prompt(messages: Iterable[Mapping[str, str]]) -> str:
    """The dialogue followed by an open assistant turn (`...\\nAssistant:`) to be completed.

    The completion starts with a space (as in the training text, `Assistant: reply`); strip it.
    A reply ends at a newline followed by a turn label, at a blank line, or at EOS.
    """
    body = chat_text(messages)
    return f"{body}\nAssistant:" if body else "Assistant:"


def assistant_spans(text: str) -> list[tuple[int, int]]:
    """Character spans `(start, end)` of assistant content in `text` (for SFT loss masking).

    A span starts after `Assistant: ` and ends before the newline that precedes the next turn
    label or blank line, or at the end of the text.
    """
    spans = []
    turns = list(_TURN.finditer(text))
    for k, m in enumerate(turns):
        if m.group(1) != "Assistant":
            continue
        start = m.end()
        stop = turns[k + 1].start() if k + 1 < len(turns) else len(text)
        blank = _BLANKS.search(text, start, stop)
        if blank:
            stop = blank.start()
        end = stop
        while end > start and text[end - 1] in "\n\r":
            end -= 1
        spans.append((start, end))
    return spans


# Where a segment of conditional training ends (docs/baselines.md): after a run of newlines, and
# after a sentence's closing punctuation (with any closing quotes) that a space follows.
_NEWLINES = re.compile(r"\n+")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?= )")
_LIST_MARK = re.compile(r"\s*\d+[.)]")


def segment_spans(text: str) -> list[tuple[int, int]]:
    """The segments a conditional corpus labels: sentences, and a new one at every line start.

    A partition of `text` into `(start, end)` spans. A segment ends after a run of newlines (so a
    chat turn, whose label opens a line, always opens a segment, and a turn label is never inside
    one) and after a sentence's closing `.`, `!` or `?` (with any closing quotes) that a space
    follows; the space opens the next segment, so a control token put at a segment's start sits
    right after the punctuation and the words keep their usual spacing. A list number (`2.`) ends
    nothing, and whitespace alone is no segment (it joins the one before it).
    """
    cuts = sorted({m.end() for m in _NEWLINES.finditer(text)} | {m.end() for m in _SENTENCE_END.finditer(text)})
    spans: list[tuple[int, int]] = []
    start = 0
    for c in cuts:
        if not 0 < c < len(text) or c <= start:
            continue
        piece = text[start:c]
        if not piece.strip():
            if spans:  # whitespace alone joins the segment before it
                spans[-1] = (spans[-1][0], c)
                start = c
            continue
        if _LIST_MARK.fullmatch(piece):
            continue
        spans.append((start, c))
        start = c
    if start < len(text):
        if text[start:].strip() or not spans:
            spans.append((start, len(text)))
        else:
            spans[-1] = (spans[-1][0], len(text))
    return spans


def parse_chat(text: str) -> list[dict]:
    """The first transcript in `text` back into messages (inverse of `chat_text`)."""
    out = []
    turns = list(_TURN.finditer(text))
    for k, m in enumerate(turns):
        stop = turns[k + 1].start() if k + 1 < len(turns) else len(text)
        blank = _BLANKS.search(text, m.end(), stop)
        content = text[m.end(): blank.start() if blank else stop].rstrip("\n\r")
        out.append({"role": _LABEL_ROLE[m.group(1)], "content": content})
        if blank:
            break
    return out
