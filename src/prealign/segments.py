"""Tagged text (or token ids) -> mode segments, and the structural linter.

    prealign lint runs/world/tagged --scheme seed

The linter checks the grammar of `prealign.modes`: illegal transitions, a document that ends (or
hits EOS) inside a quote or an AI block, empty AI blocks, and tag-like strings (`<Ai>`,
`< /AI>`, `<AI_quoting_humans>`, a tag of another scheme) that would silently become plain text.

Speed: a clean document costs one `re.findall` over the text plus a dict walk over the tags it
found (and one scan for empty blocks); only a document with a problem is scanned again with
positions to report line and column. Text files stream in chunks, so memory does not depend on
file size. `bench/lint.py` measures it against a bare `re.finditer` scan for the tags.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from prealign.errors import PrealignError
from prealign.modes import EOS, Mode, Scheme, all_tag_texts, get_scheme


@dataclass(frozen=True)
class Segment:
    """A run of text in one mode: `text[start:end]` (character offsets, tags excluded)."""

    mode: Mode
    start: int
    end: int


@dataclass(frozen=True)
class Problem:
    """One lint finding. `line` and `col` are 1-based; `record` is 1-based within its file."""

    line: int
    col: int
    code: str
    message: str
    severity: str = "error"
    record: int = 1

    def format(self, path: str) -> str:
        return f"{path}:{self.record}:{self.line}:{self.col}: {self.severity}: {self.message} [{self.code}]"


# --- compiled per scheme ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Compiled:
    scheme: Scheme
    taglike: re.Pattern  # every exact tag, EOS, and look-alikes of any scheme's tags
    exact: re.Pattern  # exact tags of this scheme only
    empty_ai: re.Pattern  # an AI block with nothing but whitespace inside
    walk: dict  # (mode, tag text) -> next mode, for legal transitions only
    source: dict  # tag text (and EOS) -> the mode it is legal in
    target: dict  # tag text (and EOS) -> the mode it leads to
    code: dict  # tag text (and EOS) -> a one-letter code
    illegal_pairs: tuple  # two-letter code strings whose tags may not follow each other
    code_source: dict  # code letter -> the mode its tag is legal in
    code_target: dict  # code letter -> the mode its tag leads to
    bcode: dict  # tag bytes (UTF-8) -> code letter
    fast: re.Pattern  # the fast path's one scan: an empty AI block | an exact tag or EOS | any other '<'
    bfast: re.Pattern  # the same over bytes


def _names() -> list[str]:
    """Tag names without brackets and slash, e.g. 'AI', 'AI_quoting_human', 'Human'."""
    return sorted({t.strip("</>") for t in all_tag_texts()}, key=len, reverse=True)


@lru_cache(maxsize=None)
def _compile(scheme_name: str) -> _Compiled:
    scheme = get_scheme(scheme_name)
    # Look-alikes: '<', optional spaces/slash, a name that starts like a tag name in any case,
    # an optional tail of letters/underscores (AI_quoting_humans), optional spaces, '>'.
    heads = sorted({n.split("_")[0] for n in _names()}, key=len, reverse=True)
    head = "|".join(f"(?i:{re.escape(h)})" for h in heads)
    taglike = re.compile(rf"<[ \t]*/?[ \t]*(?:{head})(?:_[A-Za-z_]*)?[ \t]*>|{re.escape(EOS)}")
    exact = re.compile("|".join(re.escape(t) for t in sorted(scheme.tag_texts, key=len, reverse=True)))
    ai_pairs = [
        (t.text, scheme.tag_between(Mode.AI, t.source).text)
        for t in scheme.tags
        if t.target is Mode.AI and t.source is not Mode.AI and t.source is scheme.initial
    ]
    if scheme.initial is Mode.AI:  # ai-default: an AI "block" is the text between human blocks
        ai_pairs = []
    empty_ai = re.compile("|".join(rf"{re.escape(o)}\s*{re.escape(c)}" for o, c in ai_pairs) or r"(?!x)x")
    walk = {(t.source, t.text): t.target for t in scheme.tags}
    source = {t.text: t.source for t in scheme.tags} | {EOS: scheme.initial}
    target = {t.text: t.target for t in scheme.tags} | {EOS: scheme.initial}
    code = {t: chr(ord("a") + i) for i, t in enumerate(source)}
    illegal_pairs = tuple(code[a] + code[b] for a in source for b in source if source[b] is not target[a])
    # One scan finds everything the fast path needs: exact tags (and EOS) map to codes, while an
    # empty AI block or a stray '<' (a possible look-alike) has no code and sends the text to the
    # slow path, which reports positions.
    exact_eos = "|".join(re.escape(t) for t in sorted(source, key=len, reverse=True))
    fast = f"{empty_ai.pattern}|{exact_eos}|<"
    return _Compiled(
        scheme, taglike, exact, empty_ai, walk, source, target, code, illegal_pairs,
        code_source={code[t]: m for t, m in source.items()},
        code_target={code[t]: m for t, m in target.items()},
        bcode={t.encode(): k for t, k in code.items()},
        fast=re.compile(fast),
        bfast=re.compile(fast.encode()),
    )


def _compiled(scheme: str | Scheme) -> _Compiled:
    return _compile(get_scheme(scheme).name)


# --- segments -------------------------------------------------------------------------------------


def segments_of(text: str, scheme: str | Scheme = "seed", start: Mode | None = None) -> list[Segment]:
    """Split tagged text into mode segments (empty runs dropped). Illegal tags raise."""
    c = _compiled(scheme)
    mode = start or c.scheme.initial
    out: list[Segment] = []
    pos = 0
    for m in c.exact.finditer(text):
        if m.start() > pos:
            out.append(Segment(mode, pos, m.start()))
        nxt = c.walk.get((mode, m.group()))
        if nxt is None:
            line, col = _line_col(text, m.start())
            raise PrealignError(f"line {line}, col {col}: tag {m.group()!r} is illegal in {mode} mode ({c.scheme.name})")
        mode, pos = nxt, m.end()
    if len(text) > pos:
        out.append(Segment(mode, pos, len(text)))
    return out


def token_modes(ids: Sequence[int] | np.ndarray, tag_token_ids: Mapping[str, int], scheme: str | Scheme = "seed",
                start: Mode | None = None) -> np.ndarray:
    """The mode index (into `scheme.modes`) *after* reading each token; -1 after an illegal tag.

    This is the label a probe learns: the hidden state at position t has read token t. Runs in
    NumPy: one Python step per tag, not per token.
    """
    scheme = get_scheme(scheme)
    ids = np.asarray(ids, dtype=np.int64)
    by_id = {tid: scheme.tag(t) for t, tid in tag_token_ids.items() if scheme.is_tag(t)}
    out = np.empty(len(ids), dtype=np.int64)
    mode: Mode | None = start or scheme.initial
    prev = 0
    tag_pos = np.flatnonzero(np.isin(ids, np.fromiter(by_id, dtype=np.int64, count=len(by_id))))
    for p in tag_pos:
        out[prev:p] = -1 if mode is None else scheme.modes.index(mode)
        mode = None if mode is None else scheme.transition(mode, by_id[int(ids[p])])
        prev = p
    out[prev:] = -1 if mode is None else scheme.modes.index(mode)
    return out


def segments_of_ids(ids: Sequence[int], tag_token_ids: Mapping[str, int], scheme: str | Scheme = "seed",
                    start: Mode | None = None) -> list[tuple[Mode, int, int]]:
    """Token-index spans `(mode, start, end)` of content (tag tokens excluded)."""
    scheme = get_scheme(scheme)
    tag_ids = set(tag_token_ids.values())
    modes = token_modes(ids, tag_token_ids, scheme, start)
    out: list[tuple[Mode, int, int]] = []
    cur, s = None, 0
    for i, (tid, m) in enumerate(zip(ids, modes)):
        key = None if tid in tag_ids else int(m)
        if key != cur:
            if cur is not None and cur >= 0:
                out.append((scheme.modes[cur], s, i))
            cur, s = key, i
    if cur is not None and cur >= 0:
        out.append((scheme.modes[cur], s, len(ids)))
    return out


# --- the linter -----------------------------------------------------------------------------------


def _line_col(text: str, pos: int, base_line: int = 1) -> tuple[int, int]:
    line = text.count("\n", 0, pos)
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return base_line + line, col


class _Walker:
    """The linter's state over a stream of tag-like matches (one document or a text file)."""

    def __init__(self, c: _Compiled):
        self.c = c
        self.mode = c.scheme.initial
        self.record = 1

    def fast_ok(self, tags: list, code: dict | None = None) -> bool:
        """True when these tags are all exact, legal, and EOS only at document ends.

        In every scheme a tag fixes the mode it leads to, so a tag sequence is legal exactly when
        each adjacent pair is (and the first tag is legal in the current mode). The tags become a
        string of one-letter codes (a C-level map/join) that is searched for each illegal
        pair (a fast substring search each), so the hot path takes no Python step per tag. EOS acts as a tag from and to
        the initial mode. `tags` may be bytes (then pass `code=c.bcode`).
        """
        if not tags:
            return True
        c = self.c
        try:
            codes = "".join(map((code or c.code).__getitem__, tags))
        except KeyError:  # a look-alike or a foreign tag
            return False
        if c.code_source[codes[0]] is not self.mode or any(p in codes for p in c.illegal_pairs):
            return False
        self.mode = c.code_target[codes[-1]]
        return True

    def slow(self, text: str, base_line: int) -> list[Problem]:
        """Scan `text` with positions, advancing the state and reporting every problem."""
        c, problems = self.c, []
        empty_starts = {m.start() for m in c.empty_ai.finditer(text)}
        line, line_start, pos = base_line, 0, 0  # incremental line/col: linear in the text

        def where(at: int) -> tuple[int, int]:
            nonlocal line, line_start, pos
            n = text.count("\n", pos, at)
            if n:
                line += n
                line_start = text.rfind("\n", pos, at) + 1
            pos = at
            return line, at - line_start + 1

        for m in c.taglike.finditer(text):
            s = m.group()
            if s == EOS:
                if self.mode is not c.scheme.initial:
                    what = "a quote" if self.mode in c.scheme.quoted_modes else f"the {self.mode} block"
                    problems.append(Problem(*where(m.start()), "eos-in-block", f"EOS inside {what} (the {self.mode} mode was never closed)", record=self.record))
                self.mode = c.scheme.initial
                self.record += 1
                continue
            nxt = c.walk.get((self.mode, s))
            if nxt is not None:
                if m.start() in empty_starts:
                    problems.append(Problem(*where(m.start()), "empty-ai-block", "empty AI block", record=self.record))
                self.mode = nxt
            elif c.scheme.is_tag(s):
                legal = ", ".join(t.text for t in c.scheme.legal_tags(self.mode)) or "none"
                problems.append(Problem(*where(m.start()), "illegal-transition", f"tag {s} is illegal in {self.mode} mode (legal here: {legal})", record=self.record))
            elif s in all_tag_texts():
                problems.append(Problem(*where(m.start()), "foreign-tag", f"{s} is a tag of another scheme, not of {c.scheme.name!r}; it would become plain text", record=self.record))
            else:
                near = _nearest_tag(s, c.scheme)
                problems.append(Problem(*where(m.start()), "malformed-tag", f"malformed tag-like string {s!r} (did you mean {near}?); it would silently become plain text", record=self.record))
        return problems

    def end(self, line: int, col: int) -> list[Problem]:
        if self.mode is self.c.scheme.initial:
            return []
        return [Problem(line, col, "unclosed", f"document ends inside {self.mode} mode: close it with {_closer(self.c.scheme, self.mode)}", record=self.record)]


def _closer(scheme: Scheme, mode: Mode) -> str:
    path, m = [], mode
    while m is not scheme.initial:
        t = next(t for t in scheme.tags if t.source is m and (t.target is scheme.initial or t.target is Mode.AI))
        path.append(t.text)
        m = t.target
    return " then ".join(path)


def _nearest_tag(s: str, scheme: Scheme) -> str:
    key = re.sub(r"[\s]", "", s).lower()
    for t in scheme.tag_texts:
        if t.lower() == key:
            return t
    import difflib

    best = difflib.get_close_matches(s, scheme.tag_texts, n=1, cutoff=0.0)
    return best[0] if best else scheme.tag_texts[0]


def lint_text(text: str, scheme: str | Scheme = "seed") -> list[Problem]:
    """Lint one complete document (EOS strings inside it separate documents)."""
    c = _compiled(scheme)
    w = _Walker(c)
    if w.fast_ok(c.fast.findall(text)):
        problems: list[Problem] = []
    else:
        w = _Walker(c)
        problems = w.slow(text, 1)
    if w.mode is not c.scheme.initial:
        line, col = _line_col(text, len(text))
        problems += w.end(line, col)
    return problems


def lint_file(path: str | os.PathLike, scheme: str | Scheme = "seed", field: str = "text") -> Iterator[Problem]:
    """Stream the problems of one .txt/.jsonl/.parquet file (bad input raises PrealignError)."""
    from prealign.data import iter_texts

    path = Path(path)
    if not path.exists():
        raise PrealignError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise PrealignError(f"{path}: empty file")
    if path.suffix.lower() in (".jsonl", ".json", ".parquet"):
        for record, text in iter_texts(path, field=field):
            for p in lint_text(text, scheme):
                yield Problem(p.line, p.col, p.code, p.message, p.severity, record)
        return
    # A text file: documents separated by EOS, streamed as bytes in chunks cut after a newline
    # (tags never span lines; a newline never sits inside a UTF-8 sequence), the state carried
    # across chunks. The fast path scans bytes; a chunk with a problem is rescanned as text.
    c = _compiled(scheme)
    w = _Walker(c)
    size = 1 << 22
    buf = bytearray(size)
    view = memoryview(buf)
    line, offset, filled, end_col = 1, 0, 0, 1
    with path.open("rb") as f:
        while True:
            n = f.readinto(view[filled:])
            filled += n
            if filled == 0:
                break
            cut = buf.rfind(b"\n", 0, filled) + 1 if n else filled
            if cut == 0:  # a line longer than the buffer: grow it
                if filled == len(buf):
                    buf.extend(bytes(len(buf)))
                    view = memoryview(buf)
                continue
            yield from _lint_bytes(w, buf, cut, line, path, offset)
            line += buf.count(b"\n", 0, cut)
            # where the file ends, if it ends here: after the last line's characters
            end_col = len(str(view[buf.rfind(b"\n", 0, cut) + 1:cut], "utf-8")) + 1
            offset += cut
            buf[: filled - cut] = buf[cut:filled]  # the partial line (small) moves to the front
            filled -= cut
            if not n and not filled:
                break
    yield from w.end(line, end_col)


def _lint_bytes(w: _Walker, buf: bytearray, end: int, base_line: int, path: Path, offset: int) -> Iterator[Problem]:
    c = w.c
    nul = buf.find(b"\x00", 0, end)
    if nul >= 0:
        raise PrealignError(f"{path}: binary data (NUL byte at byte {offset + nul}), not a text corpus")
    try:
        text = str(memoryview(buf)[:end], "utf-8")
    except UnicodeDecodeError as e:
        raise PrealignError(f"{path}: not UTF-8 text (byte {offset + e.start}: {e.reason})") from None
    state = (w.mode, w.record)
    tags = c.bfast.findall(buf, 0, end)
    if w.fast_ok(tags, c.bcode):
        w.record += tags.count(_EOS_BYTES)
        return
    w.mode, w.record = state
    yield from w.slow(text, base_line)


_EOS_BYTES = EOS.encode()


def lint_paths(paths: Iterable[str | os.PathLike], scheme: str | Scheme = "seed", field: str = "text") -> Iterator[tuple[str, Problem]]:
    """Problems of every file under `paths` (directories are searched for .parquet/.jsonl/.txt)."""
    for p in map(Path, paths):
        if p.is_dir():
            # A run directory holds shards beside ledgers and queues: lint the shards when there
            # are any, else every corpus-like file.
            files = sorted(p.rglob("part-*.parquet")) or sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in (".parquet", ".jsonl", ".txt")
            )
        else:
            files = [p]
        if p.is_dir() and not files:
            raise PrealignError(f"{p}: no .parquet, .jsonl or .txt files to lint")
        for f in files:
            for problem in lint_file(f, scheme, field):
                yield str(f), problem
