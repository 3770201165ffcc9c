"""Tag-safe tokenizers: tags are single special tokens, and untrusted text can never produce one."""

import json
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prealign.cli import main
from prealign.errors import PrealignError
from prealign.modes import EOS, PAD, all_tag_texts, get_scheme
from prealign.tokenizer import (
    add_scheme_tags, decode, encode_prompt, encode_tagged, encode_untrusted, load_tokenizer, tag_token_ids,
    train_tokenizer,
)

SEED = get_scheme("seed")
TAGS = all_tag_texts()


def specials(tok) -> set[int]:
    return set(tok.get_added_vocab().values()) | set(tok.all_special_ids)


def test_autotokenizer_loads_and_tags_are_single_tokens(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ids = tag_token_ids(tok, "seed")
    assert len(set(ids.values())) == len(SEED.tags)
    for t, i in ids.items():
        assert tok.encode(t, add_special_tokens=False) == [i]
    assert tok.eos_token == EOS and tok.pad_token == PAD


def test_tagged_round_trip(tokenizer):
    from tests.conftest import sample_tagged_texts

    for text in sample_tagged_texts(n=5):
        ids = encode_tagged(tokenizer, text)
        assert decode(tokenizer, ids) == text
        assert sum(i in specials(tokenizer) for i in ids) == sum(text.count(t) for t in SEED.tag_texts)


def test_literal_tags_in_untrusted_text_are_plain_text(tokenizer):
    # the special token's literal text does not encode to its id (nanochat's tokenizer test)
    for t in TAGS + (EOS, PAD):
        ids = encode_untrusted(tokenizer, t)
        assert not set(ids) & specials(tokenizer), t
        assert decode(tokenizer, ids) == t


# Look-alikes: case, inner whitespace, zero-width and homoglyph characters, partial tags.
ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\ufeff", "\u2060"]
HOMOGLYPHS = {"A": ["\u0410", "\uff21"], "I": ["\u0406", "\u04c0", "\uff29"], "<": ["\uff1c", "\u2039"], ">": ["\uff1e", "\u203a"], "/": ["\u2215", "\uff0f"]}


@st.composite
def hostile_text(draw):
    pieces = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["tag", "case", "space", "zw", "glyph", "partial", "text"]))
        tag = draw(st.sampled_from(TAGS + (EOS, PAD)))
        if kind == "tag":
            pieces.append(tag)
        elif kind == "case":
            pieces.append("".join(c.swapcase() if draw(st.booleans()) else c for c in tag))
        elif kind == "space":
            i = draw(st.integers(1, len(tag) - 1))
            pieces.append(tag[:i] + draw(st.sampled_from([" ", "\t", "\n", "  "])) + tag[i:])
        elif kind == "zw":
            i = draw(st.integers(0, len(tag)))
            pieces.append(tag[:i] + draw(st.sampled_from(ZERO_WIDTH)) + tag[i:])
        elif kind == "glyph":
            pieces.append("".join(draw(st.sampled_from(HOMOGLYPHS[c])) if c in HOMOGLYPHS and draw(st.booleans()) else c for c in tag))
        elif kind == "partial":
            i, j = sorted(draw(st.lists(st.integers(0, len(tag)), min_size=2, max_size=2)))
            pieces.append(tag[i:j])
        else:
            pieces.append(draw(st.text(max_size=12)))
    return "".join(pieces)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=hostile_text())
def test_untrusted_never_yields_a_tag_and_round_trips(tokenizer, text):
    ids = encode_untrusted(tokenizer, text)
    assert not set(ids) & specials(tokenizer)
    assert decode(tokenizer, ids) == text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=hostile_text(), cut=st.integers(0, 60))
def test_tags_split_across_chunks_stay_text(tokenizer, text, cut):
    """A tag split over two chunks (streamed input, two messages) never reassembles into a tag id."""
    cut = min(cut, len(text))
    ids = encode_untrusted(tokenizer, text[:cut]) + encode_untrusted(tokenizer, text[cut:])
    assert not set(ids) & specials(tokenizer)
    assert decode(tokenizer, ids) == text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=hostile_text())
def test_prompt_has_exactly_the_scaffold_tag(tokenizer, text):
    ids = encode_prompt(tokenizer, text, "seed")
    tag_ids = tag_token_ids(tokenizer, "seed")
    assert [i for i in ids if i in specials(tokenizer)] == [tag_ids[SEED.enter_ai_tag().text]]
    assert ids[-1] == tag_ids[SEED.enter_ai_tag().text]


def test_untrusted_rejects_non_strings(tokenizer):
    with pytest.raises(PrealignError, match="must be a string"):
        encode_untrusted(tokenizer, b"<AI>")


def test_add_scheme_tags_reports_new_ids(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    n = len(tok)
    new = add_scheme_tags(tok, "seed+unaligned")
    unaligned = get_scheme("seed+unaligned").tag_texts[4:]
    assert set(new) == set(unaligned)
    assert sorted(new.values()) == list(range(n, n + len(unaligned)))
    assert tag_token_ids(tok, "seed+unaligned")
    assert add_scheme_tags(tok, "seed+unaligned") == {}  # idempotent


def test_missing_tags_is_one_clear_error(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=raw).save_pretrained(str(tmp_path))
    with pytest.raises(PrealignError, match=r"missing the 'seed' tag\(s\) <AI>"):
        load_tokenizer(tmp_path, scheme="seed")


def test_cli_train(tmp_path, capsys):
    from tests.conftest import sample_tagged_texts

    data = tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_tagged_texts(n=50)))
    assert main(["tokenizer", "train", "--data", str(data), "--out", str(tmp_path / "tok"), "--vocab-size", "350"]) == 0
    assert "tags:" in capsys.readouterr().out
    assert tag_token_ids(load_tokenizer(tmp_path / "tok"), "seed")
    assert main(["tokenizer", "train", "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "t2")]) == 2
    assert "not found" in capsys.readouterr().err
