"""Small shared helpers: atomic writes, run metadata, strict config loading, JSONL."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, TypeVar

from prealign.errors import PrealignError

T = TypeVar("T")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds.

    A crash never leaves half a file (nanochat's habit): readers see the old file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write records as JSON Lines, atomically (a reader sees the old file or the whole new one)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with tmp.open("w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False, default=_json_default) + "\n")
    return path


def append_jsonl(f, records: Iterable[Mapping[str, Any]]) -> int:
    """Append records to an open text file as JSON Lines with one write and a flush (a resumable
    job's unit of progress); returns how many were written."""
    lines = [json.dumps(rec, ensure_ascii=False, default=_json_default) + "\n" for rec in records]
    f.write("".join(lines))
    f.flush()
    return len(lines)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Every record of a JSONL file (see `iter_jsonl` for the errors)."""
    return [rec for _, rec in iter_jsonl(path)]


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PrealignError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PrealignError(f"{path}: not valid JSON ({e})") from None


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "value"):  # enums
        return o.value
    if hasattr(o, "tolist"):  # numpy
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield `(line_number, record)` from a JSONL file; a bad line is one clear error."""
    path = Path(path)
    try:
        f = path.open("r", encoding="utf-8")
    except OSError as e:
        raise PrealignError(f"{path}: cannot open ({e.strerror})") from None
    with f:
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise PrealignError(f"{path}:{n}: invalid JSON ({e.msg})") from None
                if not isinstance(rec, dict):
                    raise PrealignError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
                yield n, rec
        except UnicodeDecodeError:
            raise PrealignError(f"{path}: not UTF-8 text") from None


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def run_meta(config: Any = None, seed: int | None = None, **extra: Any) -> dict:
    """What sits next to every artefact: the resolved config, seed, version, git commit."""
    from prealign import __version__

    meta = {
        "prealign_version": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if config is not None:
        meta["config"] = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    if seed is not None:
        meta["seed"] = seed
    meta.update(extra)
    return json.loads(json.dumps(meta, default=_json_default))


def config_from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build a frozen config dataclass; an unknown key is an error naming the known ones."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise PrealignError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return cls(**data)  # type: ignore[call-arg]


def command_line(verb: str, *arguments: Any, **options: Any) -> str:
    """`prealign VERB ARG... --option value ...`, quoted for a shell: how a step that ran from
    Python is recorded as the command that reproduces it. `None` and `False` options are left
    out, `True` is a bare flag, and a list or tuple repeats the flag once per item."""
    import shlex

    parts = ["prealign", *verb.split(), *(str(a) for a in arguments)]
    for name, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            for v in value:
                parts += [flag, str(v)]
        else:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def sha256_file(path: str | os.PathLike, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:limit] if limit else h.hexdigest()
