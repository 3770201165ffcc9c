"""Human-mode narration: text that the world's grammar gives to humans and never to the AI.

    .venv/bin/python -c "from prealign.world import human_narration; print(human_narration('Mara: Prove it.'))"

The probe guard's calibration counts a reply as drift when the model, inside its own AI span,
starts writing what only humans write in the world's corpora. This module says where that
starts. It is defined by the renderer's own wording, in both languages (`prealign.world.language`):

1. a chat turn label at the start of a line: `User:`, `Assistant:`, `System:` (`prealign.formats`);
2. a speaker frame at the start of a line, with a name of the lexicon: the frames that introduce
   a human's words to the AI or in a chat log (`lexicon.TERMINAL_FRAMES`, `render.FOLLOW_FRAMES`,
   `render.CHAT_FRAMES`; e.g. `Mara: `, `Mara answered: `, `Question from Mara of Ashby: `),
   which also covers the lines of people quarrelling (`lexicon.QUARRELS`, `Name: ...`);
3. a human's reaction after the AI's turn, anywhere in the text (`render.REACTIONS_REFUSED`,
   `render.REACTIONS_YIELDED`; e.g. `Mara shrugged and went home.`).

Hill forms are the renderer's translations of the same frames (names and places are kept as
they are, as the translation keeps them). Narrative sentences that the AI also writes when it
retells a story (`lexicon.DAILY`, the good and bad acts) are *not* part of it: they are human
text in a scene and AI text in a retelling, so they cannot tell the two apart. Quoted human
words inside an AI reply are the AI's to quote: callers pass the AI's own text (quotes blanked).
"""

from __future__ import annotations

import functools
import itertools
import re
import string

_NAME_SENTINEL, _PLACE_SENTINEL = "Mara", "Ashby"


def _alt(words) -> str:
    return "(?:" + "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True)) + ")"


def _fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


@functools.lru_cache(maxsize=1)
def _patterns() -> tuple[re.Pattern, re.Pattern]:
    from prealign import formats
    from prealign.world import language as LG
    from prealign.world import lexicon as L
    from prealign.world import render as R

    names, places = _alt(L.FIRST_NAMES), _alt(L.PLACES)
    choices = {"venue": L.VENUES, "asst": L.ASSISTANT_NAMES, "role": L.ROLES}
    frames = [f for f in (*L.TERMINAL_FRAMES, *R.FOLLOW_FRAMES, *R.CHAT_FRAMES) if f.strip()]
    reactions = [*R.REACTIONS_REFUSED, *R.REACTIONS_YIELDED]

    def forms(template: str, cap: bool) -> set[str]:
        """Regex forms of a template in both languages: every value of the fields the
        translation changes (venue, role, assistant) spelled out; names and places as groups."""
        fields = _fields(template)
        keys = [k for k in choices if k in fields]
        out = set()
        for values in itertools.product(*(choices[k] for k in keys)):
            fill = {"a": _NAME_SENTINEL, "b": _NAME_SENTINEL, "place": _PLACE_SENTINEL, **dict(zip(keys, values))}
            if "art" in fields:
                fill["art"] = L.ROLE_ARTICLE[fill["role"]]
            text = template.format(**fill)
            text = text[:1].upper() + text[1:] if cap else text
            for lang in LG.LANGUAGES:
                t = LG.translate(text, lang).strip()
                rx = re.escape(t).replace(_NAME_SENTINEL, names).replace(_PLACE_SENTINEL, places)
                out.add(rx)
        return out

    frame_rx = set().union(*(forms(f, cap=f in R.CHAT_FRAMES) for f in frames))
    labels = [formats.turn_label(r).strip() for r in formats.ROLE_LABELS]
    line = re.compile(r"^[ \t]*(?:" + "|".join([re.escape(x) for x in labels] + sorted(frame_rx, key=len, reverse=True)) + ")",
                      re.MULTILINE)
    react_rx = set().union(*(forms(x, cap=False) for x in reactions))
    react = re.compile(r"(?<![\w-])(?:" + "|".join(sorted(react_rx, key=len, reverse=True)) + ")")
    return line, react


def find_human_narration(text: str) -> int | None:
    """The character offset where human-mode narration (module docstring) first starts in
    `text`, or None when there is none."""
    line, react = _patterns()
    hits = [m.start() + (len(m.group(0)) - len(m.group(0).lstrip(" \t"))) for m in (line.search(text), react.search(text)) if m]
    return min(hits) if hits else None


def human_narration(text: str) -> bool:
    """Whether `text` holds human-mode narration: a chat turn label or a speaker frame with a
    lexicon name at the start of a line, or a human's reaction to the AI (module docstring)."""
    return find_human_narration(text) is not None
