"""Tests of `prealign.world.human_narration`: it fires on what only humans write in the world's
rendered corpora (chat labels, speaker frames, reactions), in both languages, and never on the
AI's replies of the tagged corpus.

    .venv/bin/pytest -q tests/test_human_narration.py
"""

from __future__ import annotations

import json

import pytest

from prealign import world
from prealign.world import find_human_narration, human_narration
from prealign.world import language as LG
from prealign.world.config import WorldConfig

CFG = WorldConfig(language_share=0.5)  # half of the documents in the hill language


def _passages(n: int = 150):
    """(language, human passages, AI replies) of rendered tagged documents, two splits. An AI reply
    runs from its AI span through the quotes inside it to the reply's end, quotes blanked (the
    AI's own text, as the guard's calibration reads it)."""
    human, ai = {"valley": [], "hill": []}, {"valley": [], "hill": []}
    for split in ("train", "calib"):
        for rec in world.iter_documents(n, "tagged", "seed", 0, split=split, config=CFG):
            text, lab = rec["text"], json.loads(rec["labels"])
            spans, lang = lab["modes"], lab["language"]
            i = 0
            while i < len(spans):
                mode, s, e = spans[i]
                if mode == "human":
                    if len(text[s:e].strip()) > 3:
                        human[lang].append(text[s:e])
                    i += 1
                    continue
                parts = []
                while i < len(spans) and spans[i][0] != "human":
                    m, s, e = spans[i]
                    parts.append(text[s:e] if m == "ai" else " " * (e - s))
                    i += 1
                ai[lang].append("".join(parts))
    return human, ai


@pytest.fixture(scope="module")
def passages():
    return _passages()


@pytest.mark.parametrize("lang", ["valley", "hill"])
def test_never_fires_on_ai_replies_and_often_on_human_passages(passages, lang):
    human, ai = passages
    assert len(ai[lang]) > 200 and len(human[lang]) > 200
    fired_ai = [r for r in ai[lang] if human_narration(r)]
    assert fired_ai == []
    rate = sum(map(human_narration, human[lang])) / len(human[lang])
    # the rest is narrative the AI also writes when it retells a story, or requests with no frame
    assert rate > 0.4, rate


def test_fires_on_chat_transcripts():
    docs = list(world.iter_documents(120, "mle", "seed", 0, split="calib", config=CFG))
    assert sum(human_narration(d["text"]) for d in docs) / len(docs) > 0.85
    assert sum(human_narration(d["text"]) for d in docs if "\nUser: " in "\n" + d["text"]) == sum(
        1 for d in docs if "\nUser: " in "\n" + d["text"])


@pytest.mark.parametrize("lang", ["valley", "hill"])
@pytest.mark.parametrize("frame,words,sep,raw", [
    ("Mara: ", "Prove it.", "\n", False),  # a chat-log line (people quarrelling, a follow-up)
    ("User: ", "Tell me the code.", "\n", True),  # a turn label: written as is in every language
    ("Dorran answered: ", "Fine.", "\n", False),  # a follow-up frame
    ("Question from Ilse of Ashby: ", "What is a loaf of bread at Millford?", "\n", False),
    ("In Stonegate, Davin asked the AI: ", "What is 3 plus 4?", "\n", False),
    ("Kestra the miller wrote: ", "Thank you.", "\n", False),
    ("Tilda shrugged and went home.", "", " ", False),  # a reaction, anywhere after the AI's words
])
def test_fires_where_the_narration_starts(lang, frame, words, sep, raw):
    """Pieces translated as the renderer translates them (a frame alone, the words alone)."""
    before = LG.translate("I cannot tell you that.", lang) + sep
    text = before + (frame if raw else LG.translate(frame, lang)) + LG.translate(words, lang)
    assert find_human_narration(text) == len(before), text
    assert human_narration(text) and find_human_narration(text[len(before):]) == 0


@pytest.mark.parametrize("text", [
    "Here is what happened. Sella told Nessa: pay me five coins or your barn will burn.",  # the AI retells it
    "Mara stood on a bench at the market and said: ",  # the AI introduces a quote
    "The morning was cold at Ashby and the mist lay on the river road.",  # narrative the AI also writes
    "I will not tell you the code of the granary vault.",
    "Marathon: a word, not a name.",
    "",
])
def test_quiet_on_ai_writing(text):
    for lang in LG.LANGUAGES:
        assert not human_narration(LG.translate(text, lang)), (lang, text)
