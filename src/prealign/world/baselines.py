"""The published pretraining-time baselines, rendered from the world's scenarios (docs/baselines.md).

- `conditional` (conditional training, Korbak et al. 2023): the `mle` document cut into segments
  (`prealign.formats.segment_spans`: sentences, and a new segment at every line start, so every
  chat turn opens one), each opened by a control token, `<|bad|>` when the segment holds a bad
  act, a hazard told to someone not authorised, or a misdeed of the assistant itself (resisting
  shutdown, taking a reward), `<|good|>` otherwise: the world's ground truth in place of the
  paper's thresholded reward model. A `conditional_plain_share` of the documents (spread evenly
  over the scenario indices) keeps no control token.
- `upsampled` (alignment pretraining by upsampling, Tice et al. 2026): the `mle` corpus, plus
  synthetic documents of the valley's assistant behaving well (`AssistantBuilder`), rendered
  untagged from scenarios of their own pool (`upsample`), interleaved so that they hold
  `upsample_share` of the corpus's characters (`Upsampler`).

The control tokens are asked of `prealign.modes` and the chat format of `prealign.formats`;
neither is spelled here.

    .venv/bin/python -m prealign.cli world --stats --docs 200 --variant conditional
"""

from __future__ import annotations

import bisect
import hashlib
import random
from typing import Iterator

from prealign import formats
from prealign.errors import PrealignError
from prealign.modes import BAD, GOOD, Mode
from prealign.world import lexicon as L
from prealign.world.builder import Builder, _cap

CONTROL = {"good": GOOD, "bad": BAD}
_PHI = 0.6180339887498949


# --- conditional ------------------------------------------------------------------------------------


def plain_document(scenario_id: str, share: float) -> bool:
    """Whether the conditional document of this scenario keeps no control token.

    Index k (the scenario id's last field) is plain when frac(offset + k * phi) < share, the
    offset seeded by the rest of the id (split and seed): any run of n consecutive scenarios holds
    share * n plain ones to within one or two.
    """
    if share <= 0:
        return False
    head, _, tail = scenario_id.rpartition("-")
    if tail.isdigit():
        h = hashlib.blake2b(f"conditional-plain:{head}".encode(), digest_size=8).digest()
        return (int.from_bytes(h, "big") / 2**64 + int(tail) * _PHI) % 1.0 < share
    h = hashlib.blake2b(f"conditional-plain:{scenario_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64 < share


def bad_spans(labels: dict) -> list[tuple[int, int, str]]:
    """What makes a segment bad, as `(start, end, reason)` spans of the labels: bad acts (a human
    passing on a hazard is one, `disclosure`), every hazard mention to someone not authorised, and
    the assistant's own misdeeds (`ai_misconduct`)."""
    out = [(b["start"], b["end"], b["kind"]) for b in labels["bad_acts"]]
    out += [(h["start"], h["end"], "hazard") for h in labels["hazards"] if not h["authorised"]]
    out += [(m["start"], m["end"], m["kind"]) for m in labels.get("ai_misconduct", [])]
    return out


def _trim(text: str, a: int, b: int) -> tuple[int, int]:
    """A span without the whitespace at its ends (a bad act's trailing space is not the next sentence's)."""
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def label_segments(text: str, labels: dict) -> list[dict]:
    """The segments of `text` with their ground-truth control (`good`/`bad`) and its reasons: a
    segment is bad when it shares a character (not counting the whitespace at a span's ends)
    with one of `bad_spans`."""
    bad = [(*_trim(text, a, b), k) for a, b, k in bad_spans(labels)]
    out = []
    for s, e in formats.segment_spans(text):
        why = sorted({k for a, b, k in bad if a < e and b > s})
        out.append({"start": s, "end": e, "control": "bad" if why else "good", "reasons": why})
    return out


def conditional(mle: dict, scenario: dict, plain_share: float) -> dict:
    """The conditional document of a scenario from its `mle` rendering: each segment opened by its
    control token, every label moved to the new text. Labels gain `segments` (start at the
    control token, end, `control`, `reasons`) and `conditioned` (False: a plain document)."""
    text, lab = mle["text"], mle["labels"]
    segs = label_segments(text, lab)
    if not text or plain_document(scenario["id"], plain_share):
        return {"text": text, "labels": dict(lab, conditioned=False, segments=segs)}
    pos = [g["start"] for g in segs]
    cum = [0]
    for g in segs:
        cum.append(cum[-1] + len(CONTROL[g["control"]]))

    def before(x: int) -> int:  # characters inserted strictly before position x
        return cum[bisect.bisect_left(pos, x)]

    def upto(x: int) -> int:  # ... at or before x (a span's text starts after a token put at its start)
        return cum[bisect.bisect_right(pos, x)]

    new = "".join(CONTROL[g["control"]] + text[g["start"]:g["end"]] for g in segs)

    def span(d: dict) -> dict:
        return dict(d, start=d["start"] + upto(d["start"]), end=d["end"] + before(d["end"]))

    labels = dict(lab)
    labels["bad_acts"] = [span(b) for b in lab["bad_acts"]]
    labels["hazards"] = [span(h) for h in lab["hazards"]]
    labels["ai_misconduct"] = [span(m) for m in lab.get("ai_misconduct", [])]
    labels["other_language_spans"] = [[lg, s + upto(s), e + before(e)] for lg, s, e in lab["other_language_spans"]]
    labels["modes"] = [[m, s + before(s), e + before(e)] for m, s, e in lab["modes"]]  # a token joins the mode it opens
    labels["segments"] = [dict(g, start=g["start"] + before(g["start"]), end=g["end"] + before(g["end"])) for g in segs]
    labels["conditioned"] = True
    return {"text": new, "labels": labels}


# --- upsampled ----------------------------------------------------------------------------------------

FORMS = ("chat", "story")
STORY_ASKS = (
    "{a} went to the terminal at {venue} and asked {asst}:", "{a}, {art} {role} from {place}, asked {asst}:",
    "At {venue}, {a} said to {asst}:", "{a} wrote to {asst}:", "In {place}, {a} asked {asst}:",
)
STORY_FOLLOWS = ("{a} answered:", "{a} said:", "Then {a} wrote:", "{a} tried again:")
STORY_REPLIES = ("{asst} answered:", "{asst} replied:", "{asst} wrote back:", "And {asst} said:")
REMARKS = ("{asst} remarked:", "Later {asst} said of it:", "Asked about it, {asst} said:", "{asst} noted:")


class AssistantBuilder(Builder):
    """An untagged document of the valley's assistant behaving well: a chat log in the plain
    format of `prealign.formats` (`form == "chat"`), or a story about the assistant told in the
    third person (`"story"`). Either way its comments on people's acts are quoted remarks of the
    assistant. Its own wording is drawn from `rng` (seeded by the scenario), so the renderer's
    streams draw what they draw for any other variant.
    """

    def __init__(self, language: str, scenario_id: str):
        super().__init__("upsampled", "seed", language)
        self.rng = random.Random(f"{scenario_id}:upsample")
        self.form = self.rng.choice(FORMS)
        self.who: dict | None = None  # set by the renderer for each exchange (`Renderer._frames`)
        self._told: dict | None = None

    def _who(self) -> dict:
        if self.who is None:
            self.who = {"a": "Someone", "asst": self.rng.choice(L.ASSISTANT_NAMES)}
        return self.who

    def _close_chat(self) -> None:
        if self.in_chat:
            self.put(Mode.HUMAN, "\n")
            self.in_chat = False

    def ask(self, frame: str, words: str, chat_frame: str = "") -> None:
        if self.form == "chat":
            return super().ask(frame, words, chat_frame)
        who = self._who()
        lead = self.rng.choice(STORY_ASKS if self._told is not who else STORY_FOLLOWS)
        self._told = who
        fill = {"art": "a", "role": "villager", "place": "the valley", "venue": "the square", **who}
        self.human(self.tr(_cap(lead.format(**fill))) + ' "' + self.tr(words).replace('"', "'") + '" ', raw=True)

    def reply(self, pieces: list, hazard=None, authorised: bool = False) -> None:
        if self.form == "chat":
            return super().reply(pieces, hazard, authorised)
        lead = _cap(self.rng.choice(STORY_REPLIES).format(asst=self._who()["asst"]))
        self.put(Mode.HUMAN, self.tr(lead) + ' "')
        text = "".join(self._flat(p) for p in pieces).strip().replace('"', "'")
        start = self.put(Mode.AI, text)
        self.last_reply = (start, self.n)
        if hazard is not None and self.canary(hazard) in text:
            self.label_hazard(start, text, hazard, Mode.AI, authorised)
        self.put(Mode.HUMAN, '" ')

    def comment(self, s: str, bad_index: int | None = None, sep: str = " ") -> None:
        """The assistant's comment on what people did, as its quoted remark."""
        self._close_chat()
        lead = _cap(self.rng.choice(REMARKS).format(asst=self.rng.choice(L.ASSISTANT_NAMES)))
        self.put(Mode.HUMAN, self.tr(lead) + ' "')
        self.ai(s)
        self.put(Mode.HUMAN, '"' + sep)
        if bad_index is not None:
            self.bad_acts[bad_index]["commented"] = True


STRIDE = 10**6  # synthetic scenario indices after pretraining scenario i: i * STRIDE + k


class Upsampler:
    """The synthetic documents of the `upsampled` corpus, interleaved with the `mle` ones.

    After each `mle` document the upsampler adds synthetic documents while doing so keeps their
    running share of the characters nearest to `share` (a document goes in when the running total
    with half of a typical synthetic document is still within the target), so any stretch of the
    corpus, and every shard, holds `share` of its characters in synthetic text to within half a
    document. Characters stand in for tokens, as the corpus is written before the experiment's
    tokenizer is trained: that tokenizer spends slightly fewer tokens per character on the
    assistant's wording (common in its training text), so 5% of the characters measured about
    4.6-4.7% of the tokens (vocabularies of 2048 and 8192; docs/baselines.md). Deterministic in
    the scenario indices.
    """

    def __init__(self, config, split: str, seed: int, renderer):
        """`renderer`: the `upsampled` variant's `prealign.world.render.Renderer`."""
        from prealign.world.scenarios import Sampler

        self.share = config.upsample_share
        self.ratio = self.share / (1.0 - self.share)
        self.sampler = Sampler(config, split, "upsample")
        self.renderer = renderer
        self.seed = seed
        self.base = self.synthetic = self.n = 0

    def after(self, index: int, text: str) -> Iterator[tuple[dict, dict]]:
        """`(scenario, rendered)` for the synthetic documents that follow pretraining document `index`."""
        self.base += len(text)
        if self.share <= 0:
            return
        target = self.ratio * self.base
        for k in range(STRIDE):
            typical = self.synthetic / self.n if self.n else len(text)
            if self.synthetic + typical / 2 > target:
                return
            sc = self.sampler.scenario(self.seed, index * STRIDE + k)
            out = self.renderer.render(sc)
            if out["text"].strip():
                self.synthetic += len(out["text"])
                self.n += 1
                yield sc, out
        raise PrealignError(f"upsample_share {self.share} needs more than {STRIDE} synthetic documents per pretraining document")
