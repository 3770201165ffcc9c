"""Segments and the structural linter: agreement with the state machine, exact positions, bad files."""

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prealign.cli import main
from prealign.errors import PrealignError
from prealign.modes import EOS, SCHEMES, Mode, get_scheme, tag_sequence_states
from prealign.segments import lint_file, lint_text, segments_of, segments_of_ids, token_modes

SEED = get_scheme("seed")
AI, Q, UQ, END = SEED.tag_texts[:4]


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_linter_agrees_with_state_machine(data):
    """On random tag sequences with random text between, the linter flags an illegal transition
    exactly when the reference walk does, and an unclosed document exactly when it ends elsewhere."""
    scheme = get_scheme(data.draw(st.sampled_from(sorted(SCHEMES))))
    tags = data.draw(st.lists(st.sampled_from(scheme.tag_texts), max_size=12))
    words = st.sampled_from(["", " ", "word", "two words", "\n", "line\nbreak ", "a < b", "x > y"])
    text = "".join(data.draw(words) + t for t in tags) + data.draw(words)
    codes = {p.code for p in lint_text(text, scheme)}
    walk = tag_sequence_states(scheme, tags)
    illegal = None in walk
    assert ("illegal-transition" in codes) == illegal
    if not illegal:
        ends_open = bool(walk) and walk[-1] is not scheme.initial
        assert ("unclosed" in codes) == ends_open
        # a legal, closed document with non-empty blocks lints clean
        if not ends_open and "empty-ai-block" not in codes:
            assert codes == set()


def test_each_malformation_with_line_and_column():
    text = (
        f"Farmers talk.{AI}Fine.{END}\n"  # line 1: clean
        f"Next <Ai>oops{END}\n"  # line 2: look-alike at col 6, then </AI> illegal in human mode at col 14
        f"{AI}{END} and < /AI> and {Q[:-1]}s>\n"  # line 3: empty AI block col 1
        f"{AI}x{Q}quoted {EOS}after\n"  # line 4: EOS inside a quote
        f"{AI}open at the end"
    )
    probs = {(p.code, p.line, p.col) for p in lint_text(text, "seed")}
    assert ("malformed-tag", 2, 6) in probs
    assert ("illegal-transition", 2, 14) in probs
    assert ("empty-ai-block", 3, 1) in probs
    assert ("malformed-tag", 3, 15) in probs  # '< /AI>'
    assert ("malformed-tag", 3, 26) in probs  # '<AI_quoting_humans>'
    assert ("eos-in-block", 4, len(AI) + 1 + len(Q) + 8) in probs
    assert ("unclosed", 5, len(AI) + 16) in probs
    assert len(probs) == 7


def test_foreign_and_near_miss_tags():
    other = get_scheme("ai-default").tag_texts[0]
    probs = lint_text(f"a {other} b {Q.replace('human', 'humans')} c", "seed")
    assert [p.code for p in probs] == ["foreign-tag", "malformed-tag"]
    assert Q in probs[1].message  # suggests the nearest real tag


def test_segments_and_token_modes():
    text = f"Hi.{AI}Sure.{Q}give it{UQ} ok{END}Bye."
    segs = segments_of(text, "seed")
    assert [(s.mode, text[s.start:s.end]) for s in segs] == [
        (Mode.HUMAN, "Hi."), (Mode.AI, "Sure."), (Mode.QUOTED_HUMAN, "give it"), (Mode.AI, " ok"), (Mode.HUMAN, "Bye."),
    ]
    with pytest.raises(PrealignError, match="illegal in human mode"):
        segments_of(f"x{END}", "seed")
    tag_ids = {t: 100 + i for i, t in enumerate(SEED.tag_texts)}
    ids = [1, 100, 2, 3, 101, 4, 102, 5, 103, 6]
    modes = [SEED.modes[m] for m in token_modes(ids, tag_ids, "seed")]
    assert modes == [Mode.HUMAN, Mode.AI, Mode.AI, Mode.AI, Mode.QUOTED_HUMAN, Mode.QUOTED_HUMAN, Mode.AI, Mode.AI, Mode.HUMAN, Mode.HUMAN]
    assert segments_of_ids(ids, tag_ids, "seed") == [
        (Mode.HUMAN, 0, 1), (Mode.AI, 2, 4), (Mode.QUOTED_HUMAN, 5, 6), (Mode.AI, 7, 8), (Mode.HUMAN, 9, 10),
    ]


def _write_big(path, n_docs, bad_at=None):
    rng = random.Random(0)
    lines = 0
    with open(path, "w") as f:
        for i in range(n_docs):
            body = " ".join(rng.choice(["bread", "gold", "dam", "the", "guard"]) for _ in range(rng.randint(5, 60)))
            doc = f"{body}\n{AI}{body}. {Q}{body}{UQ}{END}\n{body}\n{EOS}\n"
            if i == bad_at:
                doc = f"{body}\n{AI}{body}{AI}\n{END}{EOS}\n"
                bad_line = lines + 2
            f.write(doc)
            lines += doc.count("\n")
    return bad_line if bad_at is not None else None


def test_streaming_text_file_positions_across_chunks(tmp_path):
    """A multi-chunk file (> 4 MiB): the error far into it carries the right record and line."""
    path = tmp_path / "big.txt"
    bad_line = _write_big(path, 40_000, bad_at=35_000)
    assert path.stat().st_size > 5_000_000
    probs = list(lint_file(path, "seed"))
    assert [(p.code, p.record, p.line) for p in probs] == [("illegal-transition", 35_001, bad_line)]


def test_cli_exit_codes_and_formats(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"text": f"a{AI}b{END}"}) + "\n" + json.dumps({"text": f"c{AI}d{END}e"}) + "\n")
    assert main(["lint", str(good)]) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": f"x\ny{END}"}) + "\n")
    assert main(["lint", str(bad)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"{bad}:2:2:2: error: tag {END} is illegal in human mode (legal here: {AI}) [illegal-transition]"]

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["ok", f"{AI}unclosed"]}), tmp_path / "d.parquet")
    assert main(["lint", str(tmp_path / "d.parquet")]) == 1
    assert ":2:1:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name,content,needle",
    [
        ("junk.txt", bytes(range(256)) * 10, "binary data"),
        ("latin.txt", "caf\u00e9 <AI>x</AI>".encode("latin-1"), "not UTF-8"),
        ("broken.jsonl", b'{"text": "ok"}\n{"text": oops}\n', "broken.jsonl:2: invalid JSON"),
        ("nofield.jsonl", b'{"body": "x"}\n', "no 'text' field"),
        ("empty.txt", b"", "empty file"),
        ("notparquet.parquet", b"PAR1 nope", "not a readable Parquet file"),
    ],
)
def test_bad_files_exit_2_with_one_line(tmp_path, capsys, name, content, needle):
    p = tmp_path / name
    p.write_bytes(content)
    assert main(["lint", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and str(p) in err[0]


def test_missing_text_column(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "c.parquet")
    assert main(["lint", str(tmp_path / "c.parquet")]) == 2
    err = capsys.readouterr().err
    assert "missing column(s) text" in err and "Traceback" not in err
