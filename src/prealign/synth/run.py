"""The synth run: scenarios (or documents, or human text) -> reviewed Parquet shards.

    prealign synth render --scenarios runs/world/scenarios.jsonl --endpoint http://127.0.0.1:8000/v1 \
        --model NAME --out runs/synth --plan default

`run_synth` loads the run's items, checks that `--out` holds no other run, and has every
unfinished rank processed (prealign.synth.rank.process_rank) by an executor: in this process
with asyncio (`--engine local`), or as Ray tasks (`--engine ray`, prealign.synth.ray_runner).
When every rank is done it writes RUN/ledger.jsonl, RUN/escalate.jsonl and RUN/run.json (config,
counts, ledger totals). A re-run of the same command skips finished ranks and answers repeated
requests from RUN/cache, so an interrupted run resumes without paying twice or duplicating a
document.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

from prealign._util import read_json, read_jsonl, run_meta, sha256_file, write_json, write_jsonl
from prealign.data import marker_path, rank_done
from prealign.errors import PrealignError
from prealign.synth.client import RequestFailed
from prealign.synth.ledger import consolidate, ledger_totals, read_ledger
from prealign.synth.plan import ReviewPlan
from prealign.synth.rank import (Runtime, SynthConfig, config_to_mapping, load_items, n_ranks, process_rank,
                                 rank_items)
from prealign.synth.ray_runner import run_ranks_ray
from prealign.synth.templates import load_template


def fingerprint(cfg: SynthConfig) -> dict:
    """What must not change between a run and its resumption (else ranks would not line up)."""
    inputs = []
    for p in cfg.inputs:
        path = Path(p)
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        inputs += [[str(f), _file_digest(f)] for f in files if f.exists()]
    plan = cfg.resolved_plan()
    templates = sorted({p.prompt for p in plan.passes if hasattr(p, "prompt")} | ({cfg.kind} if cfg.kind in ("render", "transform") else set()))
    return json.loads(json.dumps({
        "kind": cfg.kind, "inputs": inputs, "shard_size": cfg.shard_size, "scheme": cfg.scheme,
        "field": cfg.field, "chunk_chars": cfg.chunk_chars, "plan": plan.to_dict(),
        "model": cfg.client.model if cfg.client else None,
        "templates": {t: load_template(t, cfg.prompt_dir).version for t in templates},
    }))


def _file_digest(path: Path, full_limit: int = 256 << 20, edge: int = 8 << 20) -> str:
    """sha256 of a file; above `full_limit` bytes, of its size and first and last `edge` bytes
    (hashing terabytes of input on every resume would cost more than the check is worth)."""
    size = path.stat().st_size
    if size <= full_limit:
        return sha256_file(path, 16)
    import hashlib

    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(edge))
        f.seek(size - edge)
        h.update(f.read(edge))
    return "edges:" + h.hexdigest()[:16]


def check_resumable(cfg: SynthConfig, fp: dict) -> None:
    out = Path(cfg.out)
    state = out / "synth_state.json"
    if state.exists():
        old = read_json(state)
        if old != fp:
            changed = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
            raise PrealignError(f"{out} holds a synth run with different {', '.join(changed)}; "
                                "use a new --out (or delete the old run) instead of mixing two runs")
    elif (out / "completions").exists() and any((out / "completions").iterdir()):
        raise PrealignError(f"{out} already holds shards from another command; use a new --out")
    else:
        write_json(state, fp)


def run_synth(cfg: SynthConfig) -> dict:
    """Run (or resume) a synth job; returns the run summary also written to RUN/run.json."""
    cfg = cfg.with_cache()
    plan = cfg.resolved_plan()
    items = load_items(cfg)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    check_resumable(cfg, fingerprint(cfg))
    total = n_ranks(cfg, len(items))
    pending = [r for r in range(total) if not rank_done(cfg.out, r)]
    if cfg.engine == "ray":
        run_ranks_ray(cfg, pending, items)
    else:
        asyncio.run(_run_local(cfg, plan, items, pending))
    return finish_run(cfg, total, len(items))


async def _run_local(cfg: SynthConfig, plan: ReviewPlan, items: list[dict], pending: list[int]) -> None:
    from tqdm.auto import tqdm

    rt = Runtime(cfg)
    concurrency = cfg.client.concurrency if cfg.client else 1
    # Documents in flight: enough that the request limit, not a document's chain of passes or a
    # rank boundary, sets the pace; bounded so memory does not grow with the corpus.
    window = asyncio.Semaphore(max(4 * concurrency, 8))
    n_docs = sum(len(rank_items(cfg, items, r)) for r in pending)
    bar = tqdm(total=n_docs, desc=f"synth {cfg.kind}", unit="doc", disable=not cfg.progress)
    failures: list[tuple[int, Exception]] = []

    async def rank_task(rank: int, started: asyncio.Event) -> None:
        try:
            await process_rank(cfg, plan, rank, rank_items(cfg, items, rank), rt, on_doc=lambda d: bar.update(1),
                               window=window, started=started)
        except Exception as e:  # keep other ranks going; reported below
            failures.append((rank, e))

    tasks = []
    try:
        for r in pending:  # start ranks in order, each once the previous one has all its documents going
            started = asyncio.Event()
            tasks.append(asyncio.ensure_future(rank_task(r, started)))
            await started.wait()
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        bar.close()
        await rt.aclose()
    if failures:
        failures.sort(key=lambda x: x[0])
        rank, first = failures[0]
        if len(failures) == 1 and not isinstance(first, RequestFailed) and isinstance(first, PrealignError):
            raise first
        raise PrealignError(f"{len(failures)} of {len(pending)} rank(s) did not finish (rank {rank}: {first}); "
                            "finished ranks are kept: re-run the same command to resume")


def finish_run(cfg: SynthConfig, total: int, n_items: int) -> dict:
    """Consolidate the ledger and escalate queue and write RUN/run.json (once every rank is done)."""
    out = Path(cfg.out)
    missing = [r for r in range(total) if not rank_done(out, r)]
    if missing:
        raise PrealignError(f"{out}: {len(missing)} rank(s) unfinished (first: {missing[0]}); re-run the same command to resume")
    counts: Counter = Counter()
    reasons: Counter = Counter()
    for r in range(total):
        m = read_json(marker_path(out, r))
        for k in ("kept", "rejected", "escalated", "kept_tokens", "kept_chars"):
            counts[k] += int(m.get(k, 0))
        reasons.update(m.get("reject_reasons", {}))
    if (out / "ledger").exists():
        consolidate(out)
    queues = sorted((out / "escalate").glob("*.jsonl")) if (out / "escalate").exists() else []
    write_jsonl(out / "escalate.jsonl", [rec for p in queues for rec in read_jsonl(p)])
    ledger = ledger_totals(read_ledger(out)) if (out / "ledger.jsonl").exists() else ledger_totals([])
    summary = {
        "items": n_items, "ranks": total,
        "kept": counts["kept"], "rejected": counts["rejected"], "escalated": counts["escalated"],
        "kept_tokens": counts["kept_tokens"], "kept_chars": counts["kept_chars"],
        "reject_reasons": dict(reasons.most_common()),
        "ledger": ledger,
    }
    write_json(out / "run.json", run_meta(config_to_mapping(cfg), cfg.seed, summary=summary))
    return summary
