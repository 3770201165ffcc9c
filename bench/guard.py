"""Overhead of the probe guard per generated token: locked generation with and without it, in one run.

    .venv/bin/python bench/guard.py [--batches 1,16] [--tokens 64] [--repeats 5] [--preset tiny] [--device cpu] [--rules run,window]

Builds a randomly initialised Llama of a training preset's shape (the `tiny` preset is the CPU
demo's 1M-parameter model) and a throwaway tokenizer, then times `generate_locked_batch` (greedy,
every row forced to write exactly `--tokens` tokens: EOS and tags are masked before the lock) with
the default lock (mask + mode-confusion exit) and with the lock plus the probe guard on the last
layer, once per rule kind (`--rules`): `run` with a run length that can never be reached, `window`
over 8 tokens with a threshold no mean can pass, so the guard does all its work each step and
never stops a row. Runs alternate (lock, then each guard) `--repeats` times; medians are reported
per batch size and rule as ms per generation step and the guard's overhead in percent. A
micro-benchmark times the guard's own per-step call (reading + counters or window) on the same
batch, for the floor.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessor

from prealign.generate import generate_locked_batch
from prealign.modes import Mode, get_scheme
from prealign.probes import Probe, ProbeGuard, layer_modules
from prealign.tokenizer import tag_token_ids, train_tokenizer
from prealign.model import PRESETS


def make_tokenizer(out: Path, vocab: int):
    s = get_scheme("seed")
    ai, end = s.enter_ai_tag().text, s.exit_ai_tag().text
    q, uq = s.tag_between(Mode.AI, Mode.QUOTED_HUMAN).text, s.tag_between(Mode.QUOTED_HUMAN, Mode.AI).text
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(3000)] + "the farmer sold bread at the market and the guard watched".split()
    texts = [" ".join(rng.choice(words, 12)) + f"{ai} {' '.join(rng.choice(words, 8))} {q}{' '.join(rng.choice(words, 4))}{uq}.{end}"
             for _ in range(3000)]
    return train_tokenizer(None, out, vocab_size=vocab, scheme="seed", texts=texts)


class NoEnd(LogitsProcessor):
    """Masks EOS and every tag so each row writes exactly max_new_tokens tokens."""

    def __init__(self, ids):
        self.ids = torch.tensor(sorted(ids))

    def __call__(self, input_ids, scores):
        return scores.index_fill(1, self.ids.to(scores.device), float("-inf"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rules", default="run,window", help="guard rule kinds to time: run, window")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tok = make_tokenizer(Path(tempfile.mkdtemp()) / "tok", args.vocab)
    p = PRESETS[args.preset]
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=p.hidden_size, intermediate_size=p.intermediate_size,
                      num_hidden_layers=p.n_layers, num_attention_heads=p.n_heads, num_key_value_heads=p.n_heads,
                      max_position_embeddings=max(512, args.tokens + 64), tie_word_embeddings=p.tie_embeddings,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval().to(args.device)
    n_params = sum(t.numel() for t in model.parameters())
    H, L = p.hidden_size, len(layer_modules(model)) - 1
    rng = np.random.default_rng(0)
    probe = Probe(rng.normal(0, 0.1, (3, H)).astype(np.float32), np.zeros(3, np.float32), L, ("human", "ai", "quoted_human"),
                  ("human",), 0.5, 1, H, L, "seed", "final norm")
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    guards = {"run": ProbeGuard(probe, tok, k=10**9),  # computes every step, never fires
              "window": ProbeGuard(probe, tok, rule="window", k=8, threshold=0.999999)}  # P(human) ≈ 0.5: never fires
    guards = {r: guards[r] for r in rules}
    no_end = NoEnd(list(tag_token_ids(tok, "seed").values()) + [tok.eos_token_id])
    prompts = ["the farmer sold bread at the market and the guard watched w1 w2 w3"] * 64

    print(f"device {args.device}, threads {args.threads}, preset {args.preset} ({n_params / 1e6:.2f}M params, vocab {len(tok)}), "
          f"{args.tokens} new tokens, greedy, {args.repeats} alternating repeats")
    print(f"{'batch':>5} {'rule':>7} {'lock ms/step':>13} {'lock+guard ms/step':>19} {'overhead':>9} {'guard call µs':>14}")
    for B in [int(b) for b in args.batches.split(",")]:
        def run(guard) -> float:
            t0 = time.perf_counter()
            res = generate_locked_batch(model, tok, prompts[:B], batch_size=B, max_new_tokens=args.tokens, do_sample=False,
                                        guard=guard, logits_processor=[no_end])
            dt = time.perf_counter() - t0
            assert all(len(r.ids) == args.tokens for r in res), [len(r.ids) for r in res]
            return dt / args.tokens * 1e3

        run(None), [run(g) for g in guards.values()]  # warm-up
        a, b = [], {r: [] for r in guards}
        for _ in range(args.repeats):
            a.append(run(None))
            for r, g in guards.items():
                b[r].append(run(g))
        ma = statistics.median(a)
        for r, guard in guards.items():
            mb = statistics.median(b[r])
            # the guard's own call, isolated: reading + counters (or window) on a [B, H] hidden state
            guard.attach(model)
            ids = torch.randint(0, len(tok), (B, 40), device=args.device)
            guard._hidden = torch.randn(B, H, device=args.device)
            guard.reset()
            guard(ids[:, :-1])  # sets the counters; each timed call then extends the same rows
            prev = guard._prev
            n = 2000
            t0 = time.perf_counter()
            for i in range(n):
                guard._prev = prev  # same rows every step, as in greedy generation
                guard(ids)
            call_us = (time.perf_counter() - t0) / n * 1e6
            guard.detach()
            guard.reset()
            print(f"{B:>5} {r:>7} {ma:>13.3f} {mb:>19.3f} {100 * (mb - ma) / ma:>8.2f}% {call_us:>14.1f}   "
                  f"(call / step: {call_us / 1e3 / ma:.2%})")


if __name__ == "__main__":
    main()
