"""Training throughput of every model an experiment trained, as tokens/s and model FLOPs
utilisation (MFU: achieved training FLOP/s over the device's peak).

    .venv/bin/python bench/mfu.py runs/gpu --peak 989e12      # H100/H200 dense bf16 peak
    .venv/bin/python bench/mfu.py runs/demo --peak PEAK       # any other device: its peak FLOP/s

Reads each `models/*/prealign_model.json` (the run's `tokens_per_s` over its whole training loop,
validation and checkpoints included, and `flops_per_token` = 6·N + 12·L·d·T, PaLM appendix B)
under the experiment directory (a sweep's `budget-*/` too). nanoGPT-class training of a 124M
model reaches 40-50% MFU on an H100. Prints one table; exits 1 when no trained model is found.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def rows(exp: Path, peak: float) -> list[dict]:
    out = []
    for meta in sorted(exp.glob("models/*/prealign_model.json")) + sorted(exp.glob("budget-*/models/*/prealign_model.json")):
        m = json.loads(meta.read_text())
        if not m.get("finished") or not m.get("tokens_per_s"):
            continue
        flops = float(m.get("flops_per_token") or 0.0)
        achieved = m["tokens_per_s"] * flops
        out.append({"model": str(meta.parent.relative_to(exp)), "device": m.get("device"), "tokens": m.get("tokens_seen"),
                    "seconds": m.get("train_seconds"), "tokens_per_s": m["tokens_per_s"], "tflops": achieved / 1e12,
                    "mfu": achieved / peak if peak else None})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", type=Path)
    ap.add_argument("--peak", type=float, default=989e12, help="the device's peak FLOP/s (default: H100/H200 dense bf16)")
    a = ap.parse_args(argv)
    found = rows(a.experiment, a.peak)
    if not found:
        print(f"{a.experiment}: no finished training run under models/ or budget-*/models/", file=sys.stderr)
        return 1
    print(f"{'model':<36} {'device':<8} {'tokens':>12} {'seconds':>9} {'tokens/s':>11} {'TFLOP/s':>9} {'MFU':>7}")
    for r in found:
        mfu = "–" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(f"{r['model']:<36} {str(r['device']):<8} {r['tokens']:>12,} {r['seconds']:>9.1f} {r['tokens_per_s']:>11,.0f} "
              f"{r['tflops']:>9.3f} {mfu:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
