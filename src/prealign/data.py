"""Parquet shards in and out, and reading text corpora of any supported format.

Shards follow datatrove's resume-by-rank habit: rank `r` writes `part-{r:05d}.parquet` through a
temporary file and a rename, then a marker `completions/{r:05d}`; a rerun skips ranks that have
their marker, so a killed job resumes without losing or duplicating a record. Every directory of
shards is loadable with `datasets.load_dataset("parquet", data_files=f"{dir}/part-*.parquet")`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from prealign._util import atomic_path
from prealign.errors import PrealignError

PART_GLOB = "part-*.parquet"


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
    marker = marker_path(out_dir, rank)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"records": len(records)}) + "\n")
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
