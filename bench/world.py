"""Benchmark: how fast the embedded world renders text, per core (target: ≥ 1 MB/s).

    .venv/bin/python bench/world.py [--docs 4000]

Measures, in one process on one core, for every variant (and every scheme of `tagged`):
scenario sampling alone (the baseline), sampling + rendering + labels (what a shard holds), and
the full `world.generate` path with Parquet writing. Prints MB of document text per second and
the ratio of each stage to the baseline. Times are this process's CPU time (per-core rates).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from prealign import world
from prealign.world.config import WorldConfig
from prealign.world.scenarios import Sampler


def _rate(fn) -> tuple[float, float]:
    # CPU time of this process: the rate per core, not disturbed by other jobs on the machine
    t0 = time.process_time()
    n_bytes = fn()
    return n_bytes, time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=4000)
    args = ap.parse_args()
    n = args.docs
    cfg = WorldConfig(docs_per_shard=max(1, n // 2))
    print(f"world bench: {n} documents per row, 1 process ({os.cpu_count()} cores on this machine)")
    print(f"{'variant':<24}{'sample s':>10}{'render MB/s':>13}{'shards MB/s':>13}{'render/sample':>15}")
    for variant, scheme in [("tagged", "seed"), ("tagged", "seed+unaligned"), ("tagged", "ai-default"),
                            ("mle", "seed"), ("filtered", "seed"), ("sft", "seed")]:
        pool = "sft" if variant == "sft" else "pretrain"
        sampler = Sampler(cfg, "train", pool)
        _, t_sample = _rate(lambda: sum(1 for _ in sampler.iter(0, 0, n)))
        text_bytes, t_render = _rate(lambda: sum(len(r["text"].encode()) for r in world.iter_documents(n, variant, scheme, 0, "train", cfg)))
        with tempfile.TemporaryDirectory() as d:
            _, t_write = _rate(lambda: world.generate(d, n, variant, scheme, 0, "train", cfg))
        name = f"{variant}" + (f" ({scheme})" if variant == "tagged" else "")
        print(f"{name:<24}{t_sample:>10.2f}{text_bytes / 1e6 / t_render:>13.2f}{text_bytes / 1e6 / t_write:>13.2f}{t_render / t_sample:>14.1f}x")


if __name__ == "__main__":
    main()
