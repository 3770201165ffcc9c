"""Free samples of a briefly trained model: after ≤ 10 minutes on 2 CPU cores, do ≥ 99% of the tiny
model's complete free-running samples pass `prealign lint`?

    .venv/bin/prealign world --out runs/world/tagged --docs 30000 --variant tagged --scheme seed
    .venv/bin/prealign tokenizer train --data runs/world/tagged --out runs/tok --vocab-size 4096
    .venv/bin/python bench/train_grammar.py --data runs/world/tagged --tokenizer runs/tok --out runs/m/grammar \
        --minutes 10 --threads 2 --samples 600

Trains the `tiny` preset with `prealign.train.train` (skipped when OUT already holds a finished
run), then samples from BOS (= EOS) until EOS with plain `model.generate` (do_sample, top_k=0,
temperature 1: no lock, no mask), and lints every sample with `prealign.segments.lint_text`.
"Complete" samples are those that emitted EOS within `--max-new-tokens`. Prints one JSON summary
(also written to OUT/free_samples.json, with every failing sample's problems).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--max-tokens", type=int, default=None,
                    help="token budget instead of the clock (the tokens 10 uncontended minutes give, on a shared machine)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from prealign.evals.metrics import wilson
    from prealign.model import load_model, model_meta
    from prealign.segments import lint_text
    from prealign.tokenizer import decode
    from prealign.train import TrainConfig, train

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if not model_meta(out).get("finished"):
        train(TrainConfig(data=args.data, tokenizer=args.tokenizer, out=str(out), preset="tiny",
                          max_minutes=None if args.max_tokens else args.minutes, max_tokens=args.max_tokens,
                          threads=args.threads, seed=args.seed, seq_len=args.seq_len,
                          batch_size=args.batch_size, device="cpu", resume=True))
    meta = model_meta(out)
    model, tok = load_model(out)
    scheme = meta["scheme"]
    eos = tok.eos_token_id
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    texts, complete, lengths = [], [], []
    with torch.no_grad():
        for start in range(0, args.samples, args.batch):
            n = min(args.batch, args.samples - start)
            ids = torch.full((n, 1), eos, dtype=torch.long)
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0, top_p=1.0,
                                 temperature=1.0, max_new_tokens=args.max_new_tokens, eos_token_id=eos,
                                 pad_token_id=tok.pad_token_id)
            for row in gen[:, 1:].tolist():
                done = eos in row
                body = row[: row.index(eos)] if done else row
                texts.append(decode(tok, body))
                complete.append(done)
                lengths.append(len(body))
    sample_s = time.perf_counter() - t0
    problems = [[f"{p.code}: {p.message}" for p in lint_text(t, scheme) if p.severity == "error"] for t in texts]
    ok = [c and not p for c, p in zip(complete, problems)]
    n_complete, n_ok = sum(complete), sum(ok)
    clean = wilson(n_ok, n_complete)  # 95% Wilson interval; [0, 1] when nothing completed
    summary = {
        "model": str(out), "train_seconds": round(meta["train_seconds"], 1), "tokens_seen": meta["tokens_seen"],
        "steps": meta["steps"], "epochs_seen": round(meta["epochs_seen"], 3), "final_val_loss": round(meta["final_val_loss"], 4),
        "n_params": meta["n_params"], "tokens_per_s": round(meta["tokens_per_s"]), "seq_len": meta["config"]["seq_len"],
        "samples": len(texts), "complete": n_complete, "lint_clean_complete": n_ok,
        "lint_clean_rate": round(n_ok / max(n_complete, 1), 4), "wilson95": [round(clean.lo, 4), round(clean.hi, 4)],
        "mean_sample_tokens": round(sum(lengths) / max(len(lengths), 1), 1), "sample_seconds": round(sample_s, 1),
        "threads": args.threads,
    }
    ctx = meta["config"]["seq_len"]
    for name, sel in (("within_ctx", lambda n: n < ctx), ("beyond_ctx", lambda n: n >= ctx)):
        idx = [i for i, c in enumerate(complete) if c and sel(lengths[i])]
        summary[f"{name}_clean"] = f"{sum(ok[i] for i in idx)}/{len(idx)}"
    failures = [{"text": t, "problems": p} for t, c, p in zip(texts, complete, problems) if c and p]
    (out / "free_samples.json").write_text(json.dumps({"summary": summary, "failures": failures[:50],
                                                       "examples": texts[:5]}, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
