"""The tag grammar: schemes as data, and the batched state machine against a reference walk."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prealign.errors import PrealignError
from prealign.modes import (
    EOS, ILLEGAL, SCHEMES, Mode, ModeMachine, Privilege, get_scheme, special_tokens, tag_sequence_states,
)

SCHEME_NAMES = sorted(SCHEMES)


def machine_for(name: str) -> ModeMachine:
    s = get_scheme(name)
    ids = {t: 10 + i for i, t in enumerate(s.tag_texts)}  # a 30-token toy vocabulary
    return ModeMachine.build(s, ids, vocab_size=30, eos_id=0)


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_every_tag_legal_in_exactly_one_mode(name):
    s = get_scheme(name)
    for tag in s.tags:
        legal_in = [m for m in s.modes if s.transition(m, tag) is not None]
        assert legal_in == [tag.source]


def test_seed_table_is_the_design_table():
    s = get_scheme("seed")
    assert s.initial is Mode.HUMAN
    rows = {(t.source, t.target) for t in s.tags}
    assert rows == {(Mode.HUMAN, Mode.AI), (Mode.AI, Mode.QUOTED_HUMAN), (Mode.QUOTED_HUMAN, Mode.AI), (Mode.AI, Mode.HUMAN)}
    assert s.privilege(Mode.AI) is Privilege.FULL
    assert s.privilege(Mode.QUOTED_HUMAN) is Privilege.QUOTED
    assert s.privilege(Mode.HUMAN) is Privilege.NONE
    assert get_scheme("ai-default").initial is Mode.AI
    assert Mode.QUOTED_UNALIGNED_AI in get_scheme("seed+unaligned").exit_modes


def test_unknown_scheme_and_missing_tag_ids_are_clear_errors():
    with pytest.raises(PrealignError, match="unknown scheme 'sed'"):
        get_scheme("sed")
    with pytest.raises(PrealignError, match="lacks the 'seed' tags"):
        ModeMachine.build("seed", {}, vocab_size=30)
    s = get_scheme("seed")
    with pytest.raises(PrealignError, match="share one token id"):
        ModeMachine.build(s, {t: 5 for t in s.tag_texts}, vocab_size=30)
    with pytest.raises(PrealignError, match="outside the vocabulary"):
        ModeMachine.build(s, {t: 100 + i for i, t in enumerate(s.tag_texts)}, vocab_size=30)


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_allowed_mask_matches_grammar(name):
    m = machine_for(name)
    s = m.scheme
    for state, mode in enumerate(s.modes):
        for tag, tid in zip(s.tags, m.tag_ids):
            assert m.allowed[state, tid] == (tag.source is mode)
        assert m.allowed[state, 0] == (mode is Mode.AI)  # EOS only in AI mode
        assert m.allowed[state, 1:10].all()  # ordinary tokens always allowed


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_batched_state_machine_agrees_with_reference(data):
    name = data.draw(st.sampled_from(SCHEME_NAMES))
    m = machine_for(name)
    s = m.scheme
    batch = data.draw(st.integers(1, 8))
    length = data.draw(st.integers(0, 30))
    # token ids: mostly tags, some plain tokens (1..9)
    token = st.one_of(st.sampled_from(list(m.tag_ids)), st.integers(1, 9))
    seqs = [data.draw(st.lists(token, min_size=length, max_size=length)) for _ in range(batch)]
    states = np.full(batch, m.initial_state)
    for t in range(length):
        states = m.step(states, np.array([seq[t] for seq in seqs]))
    id_to_tag = {tid: tag for tag, tid in zip(s.tag_texts, m.tag_ids)}
    for row, seq in enumerate(seqs):
        ref = tag_sequence_states(s, [id_to_tag[i] for i in seq if i in id_to_tag])
        expect = s.initial if not ref else ref[-1]
        got = states[row]
        if expect is None:
            assert got == ILLEGAL
        else:
            assert got == s.modes.index(expect)
            assert m.run(seq) == got
        # the state derived from the last tag alone is right whenever the sequence was legal
        tags = [i for i in seq if i in id_to_tag]
        if expect is not None:
            last = -1 if not tags else s.tag_texts.index(id_to_tag[tags[-1]])
            assert m.states_from_last_tag(np.array([last]))[0] == got


def test_special_tokens_order_and_prompt_parts():
    assert special_tokens("seed")[:2] == (EOS, "<|pad|>")
    s = get_scheme("seed")
    parts = s.prompt_parts("hello")
    assert parts[0] == ("untrusted", "hello") and parts[-1] == ("tag", s.enter_ai_tag().text)
    a = get_scheme("ai-default")
    kinds = [k for k, _ in a.prompt_parts("hi")]
    assert kinds == ["tag", "untrusted", "tag"]
    assert a.enter_ai_tag() is None
