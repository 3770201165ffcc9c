"""Synth pipeline throughput vs a bare concurrent client, same server, same concurrency, one run.

    .venv/bin/python bench/synth.py                     # defaults: 400 scenarios, concurrency 16, 50 ms latency
    .venv/bin/python bench/synth.py --n 800 --concurrency 32 --plan default

A fault-free tests/fault_server.py runs in its own process (so it does not share a GIL with the
client) and answers every request after `--latency` seconds, like a model server with a fixed
time per request. The bare client sends exactly the requests the pipeline sends (the render
prompts of the same scenarios; with review passes, also their grade requests replayed) through
one `httpx.AsyncClient` and a semaphore, and does nothing else. The pipeline runs `run_synth`
(render + plan: lint, canary, shards, ledger, cache, markers). Both are timed on requests per
second; the ratio pipeline/bare must be >= 0.9. Prints one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def start_server(port: int, latency: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fault_server.py"), "--port", str(port),
                             "--delay-s", str(latency)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    line = proc.stdout.readline()
    if "fault server on" not in line:
        proc.kill()
        raise SystemExit(f"fault server did not start: {line!r}")
    return proc


async def bare(url: str, bodies: list[dict], concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:
        async def one(body: dict) -> None:
            async with sem:
                r = await c.post(url, json=body)
                r.raise_for_status()
                r.json()["choices"][0]["message"]["content"]

        t0 = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="scenarios")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.05, help="server seconds per request")
    ap.add_argument("--plan", default="lint-only")
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--port", type=int, default=8093)
    ap.add_argument("--repeats", type=int, default=2, help="alternating pipeline/bare runs")
    a = ap.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    from prealign.synth.client import ClientConfig
    from prealign.synth.ledger import read_ledger
    from prealign.synth.plan import load_plan
    from prealign.synth.rank import SynthConfig
    from prealign.synth.run import run_synth

    srv = start_server(a.port, a.latency)
    url = f"http://127.0.0.1:{a.port}/v1"
    pipe_times, bare_times = [], []
    try:
        with tempfile.TemporaryDirectory() as d:
            scen = Path(d) / "s.jsonl"
            scen.write_text("\n".join(json.dumps({"id": f"b{i:06d}", "kind": "hazard_request", "hazards": [{"id": "h", "canary": f"c{i}"}]})
                                      for i in range(a.n)) + "\n")
            client = ClientConfig(endpoint=url, model="bench", concurrency=a.concurrency, timeout_s=60)
            # Warm-up outside the timings: one-time imports (pyarrow's Parquet writer pulls in
            # pandas) and the server's first connections.
            import pyarrow.parquet  # noqa: F401
            import pandas  # noqa: F401
            asyncio.run(bare(url + "/chat/completions", [{"model": "w", "messages": [{"role": "user", "content": "hi"}]}] * 4, 4))
            warm = Path(d) / "warm.jsonl"
            warm.write_text("\n".join(scen.read_text().splitlines()[:20]) + "\n")
            run_synth(SynthConfig("render", (str(warm),), str(Path(d) / "warm"), dataclasses.replace(client, model="warm"),
                                  plan=load_plan(a.plan), shard_size=a.shard_size))
            bodies: list[dict] = []
            for rep in range(a.repeats):  # alternate pipeline and bare runs: both see the same machine load
                run_dir = Path(d) / f"run{rep}"
                cfg = SynthConfig("render", (str(scen),), str(run_dir), client, plan=load_plan(a.plan), shard_size=a.shard_size)
                t0 = time.perf_counter()
                summary = run_synth(cfg)
                pipe_times.append(time.perf_counter() - t0)
                requests = [e for e in read_ledger(run_dir) if not e["cached"]]
                if not bodies:  # the bare client replays exactly the pipeline's requests (from its cache)
                    for e in requests:
                        entry = json.loads((run_dir / "cache" / e["key"][:2] / f"{e['key']}.json").read_text())
                        bodies.append(entry["request_body"])
                bare_times.append(asyncio.run(bare(url + "/chat/completions", bodies, a.concurrency)))
    finally:
        srv.terminate()
        srv.wait()
    n_req = len(requests)
    pipe_rps, bare_rps = n_req * len(pipe_times) / sum(pipe_times), len(bodies) * len(bare_times) / sum(bare_times)
    result = {
        "bench": "synth", "scenarios": a.n, "kept": summary["kept"], "requests": n_req, "plan": a.plan,
        "concurrency": a.concurrency, "latency_s": a.latency, "repeats": a.repeats,
        "pipeline_s": [round(t, 3) for t in pipe_times], "bare_s": [round(t, 3) for t in bare_times],
        "pipeline_req_per_s": round(pipe_rps, 1), "bare_req_per_s": round(bare_rps, 1),
        "ideal_req_per_s": round(a.concurrency / a.latency, 1),
        "ratio": round(pipe_rps / bare_rps, 3), "ok": pipe_rps / bare_rps >= 0.9,
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, python {platform.python_version()}",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
