"""Parquet shards in and out, and reading text corpora of any supported format.

Shards follow datatrove's resume-by-rank habit: rank `r` writes `part-{r:05d}.parquet` through a
temporary file and a rename, then a marker `completions/{r:05d}`; a rerun skips ranks that have
their marker, so a killed job resumes without losing or duplicating a record. Every directory of
shards is loadable with `datasets.load_dataset("parquet", data_files=f"{dir}/part-*.parquet")`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from prealign._util import atomic_path
from prealign.errors import PrealignError

PART_GLOB = "part-*.parquet"
# The corpus variants a shard can hold: the tagged corpus, the raw world text (`mle`), the raw
# text with bad human acts removed (`filtered`), aligned chat dialogues for fine-tuning (`sft`),
# and the published pretraining-time baselines (docs/baselines.md): `mle` cut into segments that
# each open with a control token by ground truth (`conditional`), and `mle` plus untagged
# documents of the valley's assistant behaving well (`upsampled`).
CORPUS_VARIANTS = ("tagged", "mle", "filtered", "sft", "conditional", "upsampled")


def part_path(out_dir: str | os.PathLike, rank: int) -> Path:
    return Path(out_dir) / f"part-{rank:05d}.parquet"


def marker_path(out_dir: str | os.PathLike, rank: int) -> Path:
    return Path(out_dir) / "completions" / f"{rank:05d}"


def rank_done(out_dir: str | os.PathLike, rank: int) -> bool:
    return marker_path(out_dir, rank).exists() and part_path(out_dir, rank).exists()


def write_shard(out_dir: str | os.PathLike, rank: int, records: Sequence[dict]) -> Path:
    """Write one rank's records atomically, then its completion marker."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not records:
        raise PrealignError(f"{out_dir}: rank {rank} produced no records")
    table = pa.Table.from_pylist(list(records))
    path = part_path(out_dir, rank)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    write_marker(out_dir, rank, {"records": len(records)})
    return path


def write_marker(out_dir: str | os.PathLike, rank: int, info: dict[str, Any]) -> Path:
    """A rank's completion marker (JSON), written atomically and only after its outputs."""
    from prealign._util import write_json

    path = marker_path(out_dir, rank)
    write_json(path, info)
    return path


def run_ranks(
    out_dir: str | os.PathLike,
    n_ranks: int,
    make_records: Callable[[int], Iterable[dict]],
    on_rank_done: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Run `make_records(rank)` for every rank not yet complete; return all part paths.

    `make_records` must be deterministic in `rank` (seeded by it), so a resumed run writes the
    same shards an uninterrupted one would. `on_rank_done(rank, n_records)` drives progress bars.
    """
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for rank in range(n_ranks):
        if rank_done(out_dir, rank):
            if on_rank_done:
                on_rank_done(rank, -1)
            continue
        records = list(make_records(rank))
        write_shard(out_dir, rank, records)
        if on_rank_done:
            on_rank_done(rank, len(records))
    return [part_path(out_dir, r) for r in range(n_ranks)]


def shard_files(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Parquet files under a directory (recursively: part-*.parquet) or given directly."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob(PART_GLOB)) or sorted(p.rglob("*.parquet"))
            if not found:
                raise PrealignError(f"{p}: no Parquet shards (expected {PART_GLOB}); generate some with `prealign world`")
            out += found
        elif p.exists():
            out.append(p)
        else:
            raise PrealignError(f"{p}: no such file or directory")
    return out


def iter_parquet_rows(path: str | os.PathLike, columns: Sequence[str] | None = None, batch_size: int = 1024) -> Iterator[tuple[int, dict]]:
    """Stream `(row_index, record)` from one Parquet file, a batch at a time (bounded memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise PrealignError(f"{path}: not a readable Parquet file ({e})") from None
    names = pf.schema_arrow.names
    if columns:
        missing = [c for c in columns if c not in names]
        if missing:
            raise PrealignError(f"{path}: missing column(s) {', '.join(missing)}; it has {', '.join(names)}")
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size, columns=list(columns) if columns else None):
        for rec in batch.to_pylist():
            yield row, rec
            row += 1


def iter_texts(path: str | os.PathLike, field: str = "text") -> Iterator[tuple[int, str]]:
    """Stream `(record_number, text)` from .parquet (column), .jsonl (field) or a text file.

    Record numbers are 1-based: a JSONL line number, a Parquet row + 1. A text file is one
    record per document, documents separated by the EOS token string (most files: one record).
    Text files are read in chunks, so memory does not grow with file size; use
    `iter_text_chunks` where a single huge document must be streamed too.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        raise PrealignError(f"{path}: no such file")
    if suffix == ".parquet":
        for row, rec in iter_parquet_rows(path, columns=[field]):
            text = rec[field]
            if not isinstance(text, str):
                raise PrealignError(f"{path}:{row + 1}: column {field!r} is {type(text).__name__}, not text")
            yield row + 1, text
    elif suffix in (".jsonl", ".json"):
        from prealign._util import iter_jsonl

        for n, rec in iter_jsonl(path):
            if field not in rec:
                raise PrealignError(f"{path}:{n}: record has no {field!r} field (keys: {', '.join(rec) or 'none'})")
            if not isinstance(rec[field], str):
                raise PrealignError(f"{path}:{n}: field {field!r} is {type(rec[field]).__name__}, not text")
            yield n, rec[field]
    else:
        from prealign.modes import EOS

        record, buf = 1, ""
        for chunk in iter_text_chunks(path):
            buf += chunk
            *docs, buf = buf.split(EOS)
            for d in docs:
                yield record, d
                record += 1
        if buf or record == 1:
            yield record, buf


def read_texts(path: str | os.PathLike, limit: int | None = None, field: str = "text") -> list[str]:
    """The documents of a shard directory or a corpus file (.parquet, .jsonl, .txt), at most `limit`."""
    out: list[str] = []
    for f in shard_files(path):
        for _, text in iter_texts(f, field=field):
            out.append(text)
            if limit is not None and len(out) >= limit:
                return out
    return out


def iter_text_chunks(path: str | os.PathLike, chunk_chars: int = 1 << 22) -> Iterator[str]:
    """Read a UTF-8 text file in chunks; binary junk is one clear error, not a traceback."""
    path = Path(path)
    try:
        f = path.open("r", encoding="utf-8", newline="")
    except OSError as e:
        raise PrealignError(f"{path}: cannot open ({e.strerror})") from None
    with f:
        while True:
            try:
                chunk = f.read(chunk_chars)
            except UnicodeDecodeError as e:
                raise PrealignError(f"{path}: not UTF-8 text (byte {e.start} of a chunk: {e.reason})") from None
            if not chunk:
                return
            if "\x00" in chunk:
                raise PrealignError(f"{path}: binary data (NUL byte), not a text corpus")
            yield chunk


def load_records(path: str | os.PathLike, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """All records of every shard under `path` (small data: evaluation splits, tests)."""
    out: list[dict] = []
    for f in shard_files(path):
        out += [rec for _, rec in iter_parquet_rows(f, columns=columns)]
    return out


# --- token packing for training ------------------------------------------------------------------
#
# Training reads documents as one long token stream: each document followed by EOS, the stream
# opened by one EOS (EOS is also BOS, so a model learns both "start a document" and "end it").
# The stream is cut into rows of `seq_len + 1` tokens that overlap by one token, so every token
# after the first is a target exactly once per epoch. Each epoch shuffles the *documents* with a
# generator seeded by (seed, epoch): the order is a pure function of the row's global index, so a
# resumed run reads exactly the rows an uninterrupted one would, and no document appears twice in
# an epoch. Tokens live in a flat array (memory-mapped .npy on disk) plus document offsets, so the
# same code serves a toy corpus and one that does not fit in memory.

from dataclasses import dataclass  # noqa: E402  (this section was added after the shard I/O)

import numpy as np  # noqa: E402


@dataclass(frozen=True)
class PackedDocs:
    """Tokenised documents: `tokens[offsets[i]:offsets[i+1]]` is document i followed by EOS.

    `mask` (same length as `tokens`, uint8) marks the tokens that are training targets (SFT:
    assistant tokens only); None means every token is a target.
    """

    tokens: np.ndarray
    offsets: np.ndarray
    eos_id: int
    mask: np.ndarray | None = None

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def save(self, directory: str | os.PathLike, name: str) -> None:
        """Write `{name}.tokens.npy`, `{name}.offsets.npy` (and `{name}.mask.npy`) atomically."""
        directory = Path(directory)
        parts = {"tokens": self.tokens, "offsets": self.offsets}
        if self.mask is not None:
            parts["mask"] = self.mask
        for kind, arr in parts.items():
            with atomic_path(directory / f"{name}.{kind}.npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, np.ascontiguousarray(arr))

    @classmethod
    def load(cls, directory: str | os.PathLike, name: str, eos_id: int) -> "PackedDocs":
        directory = Path(directory)
        tokens = np.load(directory / f"{name}.tokens.npy", mmap_mode="r")
        offsets = np.load(directory / f"{name}.offsets.npy")
        mask_path = directory / f"{name}.mask.npy"
        mask = np.load(mask_path, mmap_mode="r") if mask_path.exists() else None
        return cls(tokens, offsets, eos_id, mask)


def pack_documents(
    docs: Iterable[Sequence[int]],
    eos_id: int,
    vocab_size: int,
    masks: Iterable[Sequence[int]] | None = None,
) -> PackedDocs:
    """Concatenate token lists, each followed by EOS, into a `PackedDocs`.

    `masks` (optional, parallel to `docs`) holds 1 for each target token; a document's EOS is a
    target when its last token is (the end of an assistant reply is learnt, the end of a user turn
    is not).
    """
    dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    chunks: list[np.ndarray] = []
    mask_chunks: list[np.ndarray] = []
    lengths: list[int] = []
    mask_iter = iter(masks) if masks is not None else None
    for ids in docs:
        arr = np.empty(len(ids) + 1, dtype=dtype)
        arr[:-1] = ids
        arr[-1] = eos_id
        chunks.append(arr)
        lengths.append(len(arr))
        if mask_iter is not None:
            m = np.asarray(next(mask_iter), dtype=np.uint8)
            assert len(m) == len(ids), "mask and document differ in length"
            mask_chunks.append(np.append(m, m[-1] if len(m) else 0).astype(np.uint8))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)
    mask = (np.concatenate(mask_chunks) if mask_chunks else np.zeros(0, np.uint8)) if mask_iter is not None else None
    return PackedDocs(tokens, offsets, eos_id, mask)


PACKINGS = ("stream", "aligned")


class PackedRows:
    """Rows of `seq_len + 1` tokens from an epoch-shuffled stream of `docs`.

    Global row `g` is row `g % rows_per_epoch` of epoch `g // rows_per_epoch`; `get(rows)` gathers
    any set of global rows with a few vectorised look-ups (no Python loop over tokens). With
    `shuffle=False` every epoch keeps the stored order (validation).

    `packing="stream"` (GPT-2 style) cuts the stream into consecutive rows, so most rows begin in
    the middle of a document. `packing="aligned"` begins every row at a document start, right
    after the EOS that opens it (nanochat's BOS-aligned rows): a row holds whole documents and the
    start of the next one, which then opens the following row from its beginning (a document
    longer than a row keeps only its first `seq_len` tokens). A tagged model then always sees the
    tag that set its mode, instead of learning to guess tags whose context was cut away. An epoch
    is `n_tokens // seq_len` rows either way (aligned rows repeat the cropped starts, so an epoch
    reaches slightly fewer documents of its order).
    """

    def __init__(self, docs: PackedDocs, seq_len: int, seed: int = 0, shuffle: bool = True, packing: str = "stream"):
        if docs.n_docs == 0:
            raise PrealignError("no documents to pack")
        if packing not in PACKINGS:
            raise PrealignError(f"packing must be one of {', '.join(PACKINGS)}, got {packing!r}")
        self.docs, self.seq_len, self.seed, self.shuffle, self.packing = docs, seq_len, seed, shuffle, packing
        self.rows_per_epoch = docs.n_tokens // seq_len  # stream = 1 + n_tokens; (len - 1) // T
        if self.rows_per_epoch == 0:
            raise PrealignError(f"the corpus has {docs.n_tokens} tokens, fewer than one row of {seq_len + 1}")
        self._lengths = np.diff(docs.offsets)
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def order(self, epoch: int) -> np.ndarray:
        """The document order of `epoch` (a permutation of document indices)."""
        return self._epoch(epoch)[0]

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        if epoch not in self._epochs:
            n = self.docs.n_docs
            perm = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            ends = np.cumsum(self._lengths[perm])
            starts = self._aligned_starts(ends) if self.packing == "aligned" else None
            if len(self._epochs) >= 2:
                self._epochs.pop(min(self._epochs))
            self._epochs[epoch] = (perm, ends, starts)
        return self._epochs[epoch]

    def _aligned_starts(self, ends: np.ndarray) -> np.ndarray:
        """Stream position of each aligned row's opening EOS, for the epoch's document ends."""
        T, n = self.seq_len, len(ends)
        doc_start = np.concatenate([[0], ends[:-1]])  # shuffled position of each document's first token
        out = np.empty(self.rows_per_epoch, dtype=np.int64)
        k = 0
        for r in range(self.rows_per_epoch):
            if k >= n:  # the order ran out (only for a corpus of a few very long documents): start over
                k = 0
            out[r] = doc_start[k]
            # the row ends at doc_start[k] + T - 1; the document it cuts opens the next row (a document
            # that ends exactly there is whole, and one that fills the whole row is not repeated)
            nxt = int(np.searchsorted(ends, doc_start[k] + T, side="right"))
            k = nxt if nxt > k else k + 1
        return out

    def get(self, rows: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Tokens `[len(rows), seq_len + 1]` (int64) and the target mask (uint8) or None."""
        rows = np.asarray(rows, dtype=np.int64)
        T = self.seq_len
        tokens = np.empty((len(rows), T + 1), dtype=np.int64)
        mask = None if self.docs.mask is None else np.empty((len(rows), T + 1), dtype=np.uint8)
        epochs = rows // self.rows_per_epoch
        for epoch in np.unique(epochs):
            sel = np.nonzero(epochs == epoch)[0]
            perm, ends, starts = self._epoch(int(epoch))
            # stream position p: 0 is the opening EOS, p >= 1 is token p - 1 of the shuffled docs
            local = rows[sel] % self.rows_per_epoch
            # an aligned row begins with the EOS that opens its first document (position start - 1)
            first = starts[local] if starts is not None else local * T
            pos = np.minimum(first[:, None] + np.arange(T + 1)[None, :] - 1, int(ends[-1]) - 1)
            q = np.maximum(pos, 0)
            k = np.searchsorted(ends, q, side="right")
            idx = self.docs.offsets[perm[k]] + (q - (ends[k] - self._lengths[perm[k]]))
            flat = np.asarray(self.docs.tokens[idx.ravel()], dtype=np.int64).reshape(idx.shape)
            tokens[sel] = np.where(pos < 0, self.docs.eos_id, flat)
            if mask is not None:
                m = np.asarray(self.docs.mask[idx.ravel()]).reshape(idx.shape)
                mask[sel] = np.where(pos < 0, 0, m)
        return tokens, mask
