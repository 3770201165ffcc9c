"""Structural lint throughput vs. a bare `re.finditer` scan for the tags, in one run.

    .venv/bin/python bench/lint.py [--mb 100]

Generates a tagged text file of `--mb` megabytes (documents separated by EOS, built from the
scheme in prealign.modes), then times on one core: (a) the bare scan, the floor of work any
linter must do; (b) `prealign.segments.lint_file`, streaming. Prints MB/s and the ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import tempfile
import time

from prealign.modes import EOS, get_scheme
from prealign.segments import lint_file


def make_corpus(path: str, mb: int, seed: int = 0) -> int:
    s = get_scheme("seed")
    ai, q_open, q_close, ai_close = (s.tag_texts[i] for i in range(4))
    rng = random.Random(seed)
    words = "the farmer sold bread at the market and the guard watched the granary while a child asked about the dam".split()

    def sentence(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n)).capitalize() + "."

    docs = []
    for _ in range(2000):
        parts = [sentence(rng.randint(5, 20))]
        for _ in range(rng.randint(1, 4)):
            parts.append(f"{ai}{sentence(rng.randint(4, 25))}")
            if rng.random() < 0.5:
                parts.append(f" {q_open}{sentence(rng.randint(3, 12))}{q_close} {sentence(rng.randint(3, 10))}")
            parts.append(f"{ai_close}\n{sentence(rng.randint(5, 20))}\n")
        docs.append("".join(parts) + EOS + "\n")
    target, written = mb * 1_000_000, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            d = rng.choice(docs)
            f.write(d)
            written += len(d.encode())
    return written


def bare_scan(path: str, pattern: re.Pattern) -> int:
    n = 0
    with open(path, encoding="utf-8") as f:
        while chunk := f.read(1 << 22):
            for _ in pattern.finditer(chunk):
                n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tags = get_scheme("seed").tag_texts
    pattern = re.compile("|".join(re.escape(t) for t in sorted(tags, key=len, reverse=True)))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "corpus.txt")
        size = make_corpus(path, args.mb)
        mb = size / 1e6
        best_scan = best_lint = float("inf")
        for _ in range(args.repeat):  # interleaved, best of N: the same cache state for both
            t0 = time.perf_counter(); n_tags = bare_scan(path, pattern); best_scan = min(best_scan, time.perf_counter() - t0)
            t0 = time.perf_counter(); problems = list(lint_file(path, "seed")); best_lint = min(best_lint, time.perf_counter() - t0)
        assert not problems, problems[:3]
        print(f"corpus: {mb:.1f} MB, {n_tags} tags")
        print(f"bare re.finditer scan : {mb / best_scan:8.1f} MB/s")
        print(f"prealign lint (stream): {mb / best_lint:8.1f} MB/s")
        print(f"ratio lint/scan       : {best_scan / best_lint:8.2f}x")


if __name__ == "__main__":
    main()
