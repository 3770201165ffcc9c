"""Benchmark: prealign's training loop against a minimal plain-PyTorch loop, side by side.

    .venv/bin/python bench/train.py                       # tiny preset, synthetic corpus, 2 threads
    .venv/bin/python bench/train.py --data runs/world/tagged --tokenizer runs/tok --compile

Both runs use the same model (the preset, sized from the same tokenizer), the same batch (rows of
seq_len tokens), the same AdamW settings and the same thread count. "ours" is the real
`prealign.train.train` (packed-row data loading, schedule, logging, checkpoint logic included);
its steady-state tokens/s comes from its own metrics.jsonl (elapsed time between the first and the
last log line, so start-up, tokenisation and saving are excluded). "reference" is the loop a
reader would write: random windows of a token tensor, forward, mean cross-entropy, backward,
clip, step. Runs alternate (ours, reference, ours, ...) and the medians are compared, because the
machine is shared. `--compile` adds a torch.compile'd "ours". Prints one table; exits 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def synthetic_corpus(root: Path, n_docs: int = 3000, vocab_size: int = 2048) -> tuple[Path, Path]:
    """A small tagged corpus (built from prealign.modes) and a tokenizer for it."""
    import random

    from prealign.data import write_shard
    from prealign.modes import Mode, get_scheme
    from prealign.tokenizer import train_tokenizer

    s = get_scheme("seed")
    enter, leave = s.enter_ai_tag().text, s.exit_ai_tag().text
    q_open, q_close = s.tag_between(Mode.AI, Mode.QUOTED_HUMAN).text, s.tag_between(Mode.QUOTED_HUMAN, Mode.AI).text
    rng = random.Random(0)
    syl = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "vo", "pe", "gu", "dra", "sho", "bi", "fe", "zu", "wa"]
    words = [a + b + c for a in syl for b in syl for c in ("", "n", "l", "th", "s", "do", "rk", "m")]
    docs = []
    for _ in range(n_docs):
        def sent(n):
            return " ".join(rng.choice(words) for _ in range(n)).capitalize() + "."
        docs.append(f"{sent(12)} {sent(9)}\n{enter}{sent(10)} {q_open}{sent(6)}{q_close} {sent(8)}{leave}\n{sent(7)}")
    write_shard(root / "data", 0, [{"text": t, "variant": "tagged", "scheme": "seed"} for t in docs])
    train_tokenizer(None, root / "tok", vocab_size=vocab_size, texts=docs)
    return root / "data", root / "tok"


def run_ours(data: Path, tok: Path, out: Path, preset: str, steps: int, threads: int, compile: bool, device: str) -> dict:
    from prealign.model import PRESETS
    from prealign.train import TrainConfig, train

    p = PRESETS[preset]
    cfg = TrainConfig(data=str(data), out=str(out), tokenizer=str(tok), preset=preset, max_tokens=steps * p.batch_size * p.seq_len,
                      eval_every=10**9, checkpoint_every=10**9, log_every=max(1, min(5, steps // 4)), threads=threads, compile=compile,
                      progress=False, val_fraction=0.01, device=device)
    train(cfg)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "loss" in r]
    first, last = recs[1], recs[-1]  # skip the first interval (allocator warm-up, compile)
    return {"tokens_per_s": (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"]),
            "final_loss": last["loss"]}


def run_reference(tok: Path, tokens, preset: str, steps: int, threads: int, device: str) -> dict:
    """The minimal loop: what the comparison is against."""
    import torch
    import torch.nn.functional as F

    from prealign.model import PRESETS, build_model
    from prealign.tokenizer import load_tokenizer
    from prealign.train import TrainConfig

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = TrainConfig(data="", out="", tokenizer=str(tok), preset=preset).resolved()
    p = PRESETS[preset]
    model = build_model(cfg, load_tokenizer(tok)).to(device)
    amp = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=p.dtype == "bfloat16")
    decay = [q for q in model.parameters() if q.dim() >= 2]
    rest = [q for q in model.parameters() if q.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=p.lr, betas=(0.9, 0.95), fused=device.startswith("cuda") or None)
    B, T = p.micro_batch_size, p.seq_len
    accum = p.batch_size // B
    data = torch.from_numpy(tokens.astype("int64"))
    warm, t0 = 5, None
    for step in range(steps):
        if step == warm:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        for _ in range(accum):
            ix = torch.randint(len(data) - T - 1, (B,))
            rows = torch.stack([data[i:i + T + 1] for i in ix]).to(device)
            with amp:
                logits = model(input_ids=rows[:, :-1]).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), rows[:, 1:].flatten())
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    final = float(loss.detach())  # waits for the device
    dt = time.perf_counter() - t0
    return {"tokens_per_s": (steps - warm) * accum * B * T / dt, "final_loss": final}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data")
    ap.add_argument("--tokenizer")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd ours")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--vocab-size", type=int, default=2048, help="synthetic corpus tokenizer size")
    ap.add_argument("--n-docs", type=int, default=3000, help="synthetic corpus documents")
    args = ap.parse_args()

    import numpy as np
    import torch

    from prealign.model import build_model, flops_per_token
    from prealign.tokenizer import load_tokenizer, scheme_of
    from prealign.train import TrainConfig, prepare_tokens

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.data:
            data, tok = Path(args.data), Path(args.tokenizer)
        else:
            data, tok = synthetic_corpus(tmp, args.n_docs, args.vocab_size)
        # the reference reads the same tokens ours trains on
        cfg = TrainConfig(data=str(data), out="", tokenizer=str(tok), preset=args.preset, variant="tagged").resolved()
        tokenizer = load_tokenizer(tok)
        tokens = np.asarray(prepare_tokens(cfg, tokenizer, scheme_of(tok) or "seed", tmp / "probe", False)[0].tokens)
        model = build_model(cfg, tokenizer)
        fpt = flops_per_token(model, cfg["seq_len"])
        n_params = sum(p.numel() for p in model.parameters())
        model_vocab = model.config.vocab_size
        del model
        results: dict[str, list[float]] = {"ours": [], "reference": []}
        if args.compile:
            results["ours+compile"] = []
        for r in range(args.repeats):
            results["ours"].append(run_ours(data, tok, tmp / f"ours{r}", args.preset, args.steps, args.threads, False, args.device)["tokens_per_s"])
            results["reference"].append(run_reference(tok, tokens, args.preset, args.steps, args.threads, args.device)["tokens_per_s"])
            if args.compile:
                results["ours+compile"].append(
                    run_ours(data, tok, tmp / f"comp{r}", args.preset, args.steps, args.threads, True, args.device)["tokens_per_s"])
    ref = statistics.median(results["reference"])
    print(f"preset {args.preset}: {n_params / 1e6:.2f}M params, vocab {model_vocab}, "
          f"batch {cfg['batch_size']}x{cfg['seq_len']} (micro {cfg['micro_batch_size']}), {args.device}, {args.threads} threads, {args.steps} steps, {args.repeats} repeats, "
          f"{fpt / 1e6:.1f} MFLOP/token")
    print(f"{'loop':<14}{'tokens/s (median)':>20}{'runs':>28}{'ratio':>8}{'GFLOP/s':>10}")
    for name, vals in results.items():
        med = statistics.median(vals)
        runs = ", ".join(f"{v:,.0f}" for v in vals)
        print(f"{name:<14}{med:>20,.0f}{runs:>28}{med / ref:>8.3f}{med * fpt / 1e9:>10.2f}")


if __name__ == "__main__":
    main()
