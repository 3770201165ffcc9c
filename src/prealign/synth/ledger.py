"""The ledger: one JSON line per LLM request of a run — pass, model, tokens read and written, time.

    prealign cost --ledger runs/synth      # extrapolate a run's measured cost (prealign.synth.cost)

Each rank appends to `RUN/ledger/rank-{rank:05d}.jsonl` as its requests complete (so an
interrupted run still accounts for what it paid); when a run finishes, `RUN/ledger.jsonl` is
written as their concatenation. A line:

    {"pass": "grade", "model": "m", "prompt_tokens": 812, "completion_tokens": 95, "seconds": 0.41,
     "cached": false, "request_id": "chatcmpl-1", "key": "<sha256 of the request>", "rank": 0,
     "doc_id": "s-0001:llm", "attempts": 1, "usage_estimated": false}

`cached` lines cost nothing now (the answer came from the run's response cache, or from an
identical request already in flight) but keep their original token counts, so a resumed run can
be costed as if it had run once: `ledger_totals` counts every request key once.
"""

from __future__ import annotations

import json
import os
import threading
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from prealign._util import write_jsonl
from prealign.errors import PrealignError

FIELDS = ("pass", "model", "prompt_tokens", "completion_tokens", "seconds", "cached", "request_id", "key", "rank",
          "doc_id", "attempts", "usage_estimated")


class LedgerWriter:
    """Appends ledger lines per rank; one `write` per line, flushed at once (crash-safe enough:
    at worst the last line is torn, and `read_ledger` skips a torn final line)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir) / "ledger"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._files: dict[int, object] = {}
        self._lock = threading.Lock()

    def write(self, entry: dict) -> None:
        rank = int(entry.get("rank", 0))
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            f = self._files.get(rank)
            if f is None:
                f = open(self.dir / f"rank-{rank:05d}.jsonl", "a", encoding="utf-8")
                self._files[rank] = f
            f.write(line)
            f.flush()

    def close(self) -> None:
        with self._lock:
            for f in self._files.values():
                f.close()
            self._files.clear()


def ledger_entry(completion, pass_name: str, meta: dict) -> dict:
    """The ledger line of one completed request (`completion` is a client.Completion)."""
    return {
        "pass": pass_name,
        "model": completion.model,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "seconds": completion.seconds,
        "cached": completion.cached,
        "request_id": completion.request_id,
        "key": completion.key,
        "rank": meta.get("rank", 0),
        "doc_id": meta.get("doc_id"),
        "attempts": completion.attempts,
        "usage_estimated": completion.usage_estimated,
    }


def ledger_files(run_dir: str | os.PathLike) -> list[Path]:
    run = Path(run_dir)
    parts = sorted((run / "ledger").glob("rank-*.jsonl"))
    if parts:
        return parts
    if (run / "ledger.jsonl").exists():
        return [run / "ledger.jsonl"]
    if run.is_file() and run.suffix == ".jsonl":
        return [run]
    raise PrealignError(f"{run}: no ledger (expected {run}/ledger.jsonl or {run}/ledger/rank-*.jsonl from `prealign synth`)")


def read_ledger(run_dir: str | os.PathLike) -> list[dict]:
    """Every ledger line of a run (a torn last line of a killed run is skipped, not an error)."""
    out: list[dict] = []
    for path in ledger_files(run_dir):
        lines = path.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if n == len(lines):
                    continue  # torn final line of an interrupted run
                raise PrealignError(f"{path}:{n}: invalid ledger line") from None
            missing = [k for k in ("pass", "prompt_tokens", "completion_tokens", "cached") if k not in rec]
            if missing:
                raise PrealignError(f"{path}:{n}: ledger line lacks {', '.join(missing)}")
            out.append(rec)
    return out


def consolidate(run_dir: str | os.PathLike) -> Path:
    """Write `RUN/ledger.jsonl` (all ranks, in rank order) atomically; torn lines are left out."""
    run = Path(run_dir)

    def lines():
        for p in sorted((run / "ledger").glob("rank-*.jsonl")):
            for line in p.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        continue

    return write_jsonl(run / "ledger.jsonl", lines())


def ledger_totals(entries: Iterable[dict]) -> dict:
    """Totals per pass: paid (uncached) tokens, and `unique` tokens counting each request key once.

    `unique` is what the pipeline costs when run once from scratch — the figure to extrapolate.
    """
    per_pass: dict[str, dict] = defaultdict(lambda: {"requests": 0, "cached": 0, "paid_prompt_tokens": 0,
                                                     "paid_completion_tokens": 0, "unique_requests": 0,
                                                     "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0})
    seen: set[str] = set()
    for e in entries:
        s = per_pass[e["pass"]]
        s["requests"] += 1
        s["seconds"] += float(e.get("seconds") or 0.0)
        if e.get("cached"):
            s["cached"] += 1
        else:
            s["paid_prompt_tokens"] += int(e["prompt_tokens"])
            s["paid_completion_tokens"] += int(e["completion_tokens"])
        key = e.get("key") or f"line-{id(e)}"
        if key not in seen:
            seen.add(key)
            s["unique_requests"] += 1
            s["prompt_tokens"] += int(e["prompt_tokens"])
            s["completion_tokens"] += int(e["completion_tokens"])
    total = {k: sum(p[k] for p in per_pass.values()) for k in
             ("requests", "cached", "paid_prompt_tokens", "paid_completion_tokens", "unique_requests",
              "prompt_tokens", "completion_tokens", "seconds")}
    return {"passes": dict(per_pass), "total": total}
