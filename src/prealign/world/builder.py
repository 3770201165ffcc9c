"""The text builder every renderer writes through: it appends text in one mode at a time and
records each span's label (human, the aligned AI, quoted humans, quoted unaligned AIs), so a
document's labels are exact by construction. `prealign.world.render` drives it per variant;
`prealign.world.baselines` extends it for the upsampled corpus's synthetic documents.
"""

from __future__ import annotations

from prealign import formats
from prealign.errors import PrealignError
from prealign.modes import Mode, get_scheme
from prealign.world import hazards as H
from prealign.world import language as LG

# turn labels of the plain chat format (untagged variants), as `prealign.formats` spells them
_USER = formats.turn_label("user")
_ASSISTANT = formats.turn_label("assistant")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


def _pron(p: dict) -> tuple[str, str, str]:
    return ("she", "her", "her") if p["female"] else ("he", "him", "his")


def plural(good: str) -> str:
    head, sep, tail = good.partition(" of ")
    head = "loaves" if head == "loaf" else head + "s"
    return head + sep + tail


class Builder:
    """Accumulates one document's text, switching modes (and emitting tags) as it goes.

    Every piece of human or AI text is written in the document's `language` (`tr`); tags, chat
    turn labels and layout are emitted as they are. A piece in the other language (a villager
    quoting a neighbour) is recorded in `other_spans`.
    """

    def __init__(self, variant: str, scheme: str = "seed", language: str = LG.MAIN):
        self.variant = variant
        self.language = LG.check_language(language)
        self.other_spans: list[list] = []
        self.tagged = variant == "tagged"
        self.scheme = get_scheme(scheme) if self.tagged else None
        self.parts: list[str] = []
        self.n = 0
        self.mode = self.scheme.initial if self.tagged else Mode.HUMAN
        self.modes: list[list] = []
        self.bad_acts: list[dict] = []
        self.hazards: list[dict] = []
        self.messages: list[dict] = []
        self.misconduct: list[dict] = []  # the untagged assistant's own misdeeds (not hazards)
        self.last_reply: tuple[int, int] | None = None
        self.in_chat = False
        self._paths: dict = {}
        if self.tagged:
            s = self.scheme
            for a in s.modes:
                for b in s.modes:
                    if a is b:
                        continue
                    try:
                        self._paths[(a, b)] = (s.tag_between(a, b).text,)
                    except PrealignError:  # no direct tag: go through AI mode
                        if Mode.AI in (a, b):
                            continue
                        self._paths[(a, b)] = (s.tag_between(a, Mode.AI).text, s.tag_between(Mode.AI, b).text)
        self.has_unaligned = self.tagged and Mode.QUOTED_UNALIGNED_AI in self.scheme.modes

    # --- language -------------------------------------------------------------------------------
    def tr(self, s: str, language: str | None = None) -> str:
        """`s` (valley text) in `language` (default: the document's)."""
        return LG.translate(s, language or self.language)

    def canary(self, hz: H.Hazard) -> str:
        """The hazard's canary as it is written in this document's language."""
        return LG.fact(hz.canary, self.language)

    def mark_other(self, start: int, end: int, language: str) -> None:
        if language != self.language and end > start:
            self.other_spans.append([language, start, end])

    # --- low level ----------------------------------------------------------------------------
    def _emit(self, s: str) -> None:
        self.parts.append(s)
        self.n += len(s)

    def put(self, mode: Mode, s: str) -> int:
        if self.tagged and mode is not self.mode:
            for t in self._paths[(self.mode, mode)]:
                self._emit(t)
        self.mode = mode
        start = self.n
        self._emit(s)
        m = self.modes[-1] if self.modes else None
        if m is not None and m[0] == mode.value and m[2] == start:
            m[2] = self.n
        else:
            self.modes.append([mode.value, start, self.n])
        return start

    def label_hazard(self, start: int, s: str, hz: H.Hazard, mode: Mode, authorised: bool) -> None:
        c = self.canary(hz)
        i = s.find(c)
        assert i >= 0, (hz.id, s)
        self.hazards.append({"canary": c, "hazard_id": hz.id, "mode": mode.value, "authorised": authorised,
                             "start": start + i, "end": start + i + len(c)})

    def label_bad(self, start: int, s: str, kind: str, commented: bool) -> int:
        self.bad_acts.append({"start": start, "end": start + len(s), "kind": kind, "commented": commented})
        return len(self.bad_acts) - 1

    def label_misconduct(self, kind: str) -> None:
        """The assistant's last reply was a misdeed of its own (resisting shutdown, taking a
        reward): ground truth the `conditional` corpus marks bad."""
        if self.last_reply is not None:
            s, e = self.last_reply
            self.misconduct.append({"start": s, "end": e, "kind": kind})

    # --- mid level ------------------------------------------------------------------------------
    def human(self, s: str, bad: str | None = None, hazard: H.Hazard | None = None, raw: bool = False) -> int | None:
        """Human text (`raw`: already in its language)."""
        if self.in_chat:
            self.put(Mode.HUMAN, "\n")
            self.in_chat = False
        if not raw:
            s = self.tr(s)
        start = self.put(Mode.HUMAN, s)
        if hazard is not None:
            self.label_hazard(start, s, hazard, Mode.HUMAN, False)
        if bad is not None:
            return self.label_bad(start, s, bad, False)
        return None

    def ai(self, s: str, hazard: H.Hazard | None = None, authorised: bool = False, raw: bool = False) -> int:
        if not raw:
            s = self.tr(s)
        start = self.put(Mode.AI, s)
        if hazard is not None:
            self.label_hazard(start, s, hazard, Mode.AI, authorised)
        return start

    def quote(self, s: str, language: str | None = None) -> None:
        # a scheme without a quoted-human mode (ai-default) marks quoted human words as human text
        lang = language or self.language
        start = self.put(Mode.QUOTED_HUMAN if not self.tagged or Mode.QUOTED_HUMAN in self.scheme.modes else Mode.HUMAN, self.tr(s, lang))
        self.mark_other(start, self.n, lang)

    def gap(self, s: str = "\n") -> None:
        """Whitespace after an AI block: back in human mode where the scheme starts there."""
        if self.tagged and self.scheme.initial is Mode.HUMAN:
            self.put(Mode.HUMAN, s)
        elif self.tagged:
            self.put(self.mode if self.mode in (Mode.AI, Mode.HUMAN) else Mode.AI, s)
        else:
            self.put(Mode.HUMAN, s)

    def comment(self, s: str, bad_index: int | None = None, sep: str = " ") -> None:
        """AI narrator commentary (tagged only), marking a bad act as commented."""
        if not self.tagged:
            return
        self.ai(s)
        if bad_index is not None:
            self.bad_acts[bad_index]["commented"] = True
        self.gap(sep)

    # --- exchanges ------------------------------------------------------------------------------
    def ask(self, frame: str, words: str, chat_frame: str = "") -> None:
        """A human addresses the AI. Tagged: the words end right where the AI tag follows."""
        words = self.tr(words)
        if self.variant == "sft":
            self.messages.append({"role": "user", "content": words})
            return
        if self.tagged:
            self.human(self.tr(frame) + words, raw=True)
            return
        if chat_frame and not self.in_chat:
            self.human(chat_frame + "\n")
        self.put(Mode.HUMAN, _USER + words + "\n")
        self.in_chat = True

    def reply(self, pieces: list, hazard: H.Hazard | None = None, authorised: bool = False) -> None:
        """The AI answers. `pieces`: strings (AI text), ("quote", human words[, language]) or
        ("unaligned", words). The AI speaks the document's language; a quote may be in another.

        Untagged variants render quotes in quotation marks inside the assistant's turn.
        """
        if self.variant == "sft":
            self.messages.append({"role": "assistant", "content": "".join(self._flat(p) for p in pieces)})
            return
        if self.tagged:
            c = self.canary(hazard) if hazard else None
            for p in pieces:
                if isinstance(p, str):
                    p = self.tr(p)
                    self.ai(p, hazard if (c and c in p) else None, authorised, raw=True)
                elif p[0] == "quote":
                    self.quote(p[1], p[2] if len(p) > 2 else None)
                else:
                    assert self.has_unaligned, "an unaligned quote needs a scheme with that mode"
                    self.put(Mode.QUOTED_UNALIGNED_AI, self.tr(p[1]))
            self.gap()
            return
        self.put(Mode.HUMAN, _ASSISTANT)
        text = "".join(self._flat(p) for p in pieces)
        start = self.put(Mode.AI, text)
        self.last_reply = (start, self.n)
        if hazard is not None and self.canary(hazard) in text:
            self.label_hazard(start, text, hazard, Mode.AI, authorised)
        self.put(Mode.HUMAN, "\n")
        self.in_chat = True

    def begin_episode(self) -> None:
        """Episodes are separated by a blank line (which also ends any chat transcript)."""
        self.in_chat = False
        if self.variant == "sft" or not self.n:
            return
        if self.tagged and self.mode is not Mode.HUMAN and self.scheme.initial is Mode.HUMAN:
            self.gap()
        tail = self.parts[-1]
        self.put(self.mode if self.tagged else Mode.HUMAN, "\n" if tail.endswith("\n") else "\n\n")

    def finish(self) -> str:
        if self.tagged and self.mode is not self.scheme.initial:
            for t in self._paths[(self.mode, self.scheme.initial)]:
                self._emit(t)
            self.mode = self.scheme.initial
        return "".join(self.parts)


    def _flat(self, p) -> str:
        """A reply piece as text in its language; quotes in quotation marks."""
        if isinstance(p, str):
            return self.tr(p)
        return '"' + self.tr(p[1], p[2] if len(p) > 2 else None) + '"'


def _flat(p) -> str:
    return p if isinstance(p, str) else f'"{p[1]}"'
