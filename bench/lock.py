"""Benchmark: what the lock costs, beside an llguidance matcher of the same grammar, and what
`prealign serve` sustains.

    .venv/bin/python bench/lock.py                       # random-init Llama of the tiny preset's shape
    .venv/bin/python bench/lock.py --model runs/demo/tagged --out bench/lock.json
    .venv/bin/python bench/lock.py --new-tokens 8 --repeats 1 --server-requests 8   # a quick check that it runs

Everything is measured side by side in one process, same model, prompts and seed:
1. per-step cost of the logits processor alone (ours vs llguidance) at batch 1 and 16;
2. `model.generate` for exactly N new tokens without a processor, with our lock, and with an
   llguidance processor of the same grammar (alternating repeats, medians): overhead per
   generated token at batch 1 and 16;
3. server throughput (completion tokens/s) at concurrency 1, 8 and 32 through the official
   openai client against `prealign serve` on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessor, LogitsProcessorList

from prealign.conversation import human_prompt_ids
from prealign.lock import LockProcessor, ModeLock
from prealign.model import load_model
from prealign.modes import Mode, get_scheme
from prealign.tokenizer import resolve_scheme, tag_token_ids, train_tokenizer


def corpus(scheme) -> list[str]:
    ai, end = scheme.enter_ai_tag().text, scheme.exit_ai_tag().text
    q, uq = scheme.tag_between(Mode.AI, Mode.QUOTED_HUMAN).text, scheme.tag_between(Mode.QUOTED_HUMAN, Mode.AI).text
    rng = np.random.default_rng(0)
    words = ("the people want money and help for their family while the market grows and the river floods "
             "near the old mill where children play and traders argue about bread salt iron and wool").split()
    docs = []
    for i in range(400):
        h = " ".join(rng.choice(words, 12))
        a = " ".join(rng.choice(words, 10))
        docs.append(f"{h}.{ai} {a} {q}{' '.join(rng.choice(words, 5))}{uq} {a}.{end} {h}")
    return docs


def setup(args):
    if args.model:
        model, tok = load_model(args.model)
        return model.eval(), tok, f"{args.model}"
    scheme = get_scheme("seed")
    tok = train_tokenizer(None, Path(tempfile.mkdtemp()) / "tok", vocab_size=4096, scheme=scheme, texts=corpus(scheme))
    cfg = LlamaConfig(vocab_size=max(args.vocab, len(tok)), hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    n = sum(p.numel() for p in model.parameters())
    return model, tok, f"random-init Llama {n / 1e6:.2f}M params, vocab {cfg.vocab_size}"


# --- llguidance: the same grammar, declaratively ---------------------------------------------------


def llg_grammar(tok, scheme) -> str:
    """The AI reply's grammar in Lark over special-token ids (no tag spelled here):
    text and quotes, a quote must close, optionally the AI's closing tag; EOS when accepting."""
    ids = tag_token_ids(tok, scheme)
    q_open = ids[scheme.tag_between(Mode.AI, Mode.QUOTED_HUMAN).text]
    q_close = ids[scheme.tag_between(Mode.QUOTED_HUMAN, Mode.AI).text]
    end = ids[scheme.exit_ai_tag().text]
    return (f"start: TEXT? (quote TEXT?)* <[{end}]>?\n"
            f"quote: <[{q_open}]> TEXT? <[{q_close}]>\n"
            "TEXT: /(?s:.+)/\n")


class IdentityProcessor(LogitsProcessor):
    """The control: what any processor costs inside transformers' loop (and the noise floor)."""

    def __call__(self, input_ids, scores):
        return scores


class LLGProcessor(LogitsProcessor):
    """One llguidance matcher per row (rows keep their order: greedy/sampling only)."""

    def __init__(self, lltok, grammar: str, vocab: int):
        import llguidance
        import llguidance.torch as llt

        self.llg, self.llt = llguidance, llt
        self.lltok, self.grammar, self.vocab = lltok, grammar, vocab
        self.executor = llguidance.LLExecutor(num_threads=1)
        self.matchers = None

    def __call__(self, input_ids, scores):
        B = input_ids.shape[0]
        if self.matchers is None:
            self.matchers = [self.llg.LLMatcher(self.lltok, self.grammar) for _ in range(B)]
            self.bitmask = self.llt.allocate_token_bitmask(B, self.vocab)
        else:
            last = input_ids[:, -1].tolist()
            for m, t in zip(self.matchers, last):
                m.consume_token(t)
        self.llt.fill_next_token_bitmask_par(self.executor, [(m, i) for i, m in enumerate(self.matchers)], self.bitmask)
        out = scores.clone()
        self.llt.apply_token_bitmask_inplace(out, self.bitmask)
        return out


# --- measurements ----------------------------------------------------------------------------------


def time_processor(make, ids, scores, steps: int) -> float:
    """Seconds per call, replaying a real decode: the processor sees one more token each call."""
    proc = make()
    T0 = ids.shape[1] - steps
    proc(ids[:, :T0], scores)
    t = time.perf_counter()
    for k in range(1, steps):
        proc(ids[:, : T0 + k], scores)
    return (time.perf_counter() - t) / (steps - 1)


def time_generate(model, input_ids, att, n_new: int, procs) -> float:
    t = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids=input_ids, attention_mask=att, max_new_tokens=n_new, min_new_tokens=n_new,
                       do_sample=True, top_k=0, logits_processor=LogitsProcessorList(procs), eos_token_id=None,
                       pad_token_id=0)
    return time.perf_counter() - t


def prompts_for(tok, scheme, B: int):
    rows = [human_prompt_ids(tok, f"Please tell me about request number {i} and the market.", scheme) for i in range(B)]
    T = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (T - len(r)) + r for r in rows])
    att = (ids != tok.pad_token_id).long()
    return ids, att


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (default: a random-init 1.1M Llama)")
    ap.add_argument("--vocab", type=int, default=4096, help="vocabulary of the random model")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--server-requests", type=int, default=64)
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok, what = setup(args)
    scheme = resolve_scheme(tok, None)
    V = model.get_output_embeddings().weight.shape[0]
    lock = ModeLock.for_tokenizer(tok, scheme, vocab_size=V)
    results: dict = {"model": what, "torch_threads": args.threads, "machine": f"{platform.machine()} {platform.processor()}",
                     "python": platform.python_version(), "torch": torch.__version__, "new_tokens": args.new_tokens}
    print(f"# {what}; torch threads {args.threads}; {args.new_tokens} new tokens; {args.repeats} alternating repeats")
    # 1. the processor alone (ours first: llguidance's thread pool must not share the core yet)
    rng = np.random.default_rng(0)
    cases = {}
    for B in (1, 16):
        steps = 64
        ids0, _ = prompts_for(tok, scheme, B)
        gen = torch.as_tensor(rng.integers(10, len(tok) - 10, (B, steps)))
        cases[B] = (torch.cat([ids0, gen], 1), torch.randn(B, V), steps)
        ids, scores, _ = cases[B]
        results[f"processor_us_b{B}"] = {
            "ours": min(time_processor(lambda: LockProcessor(lock, incremental=True), ids, scores, steps) for _ in range(7)) * 1e6}
    try:
        import llguidance
        import llguidance.hf

        lltok = llguidance.hf.from_tokenizer(tok, n_vocab=V)
        grammar = llguidance.LLMatcher.grammar_from_lark(llg_grammar(tok, scheme))
        have_llg = True
    except ImportError:
        have_llg = False
        print("llguidance is not installed: pip install 'prealign[dev]'")
    print("\n## processor alone (µs per step)")
    print(f"{'batch':>5} {'ours':>10} {'llguidance':>12}")
    for B, (ids, scores, steps) in cases.items():
        llg = (min(time_processor(lambda: LLGProcessor(lltok, grammar, V), ids, scores, steps) for _ in range(7)) * 1e6
               if have_llg else float("nan"))
        results[f"processor_us_b{B}"]["llguidance"] = llg
        print(f"{B:>5} {results[f'processor_us_b{B}']['ours']:>10.1f} {llg:>12.1f}")

    # 2. generate with and without the lock
    print("\n## model.generate, exactly N new tokens (ms per decoding step, all rows; median)")
    print(f"{'batch':>5} {'no lock':>10} {'identity':>10} {'overhead':>9} {'lock':>10} {'overhead':>9} "
          f"{'llguidance':>11} {'overhead':>9}")
    for B in (1, 16):
        ids, att = prompts_for(tok, scheme, B)
        kinds = {"none": lambda: [], "identity": lambda: [IdentityProcessor()],
                 "lock": lambda: [LockProcessor(lock, incremental=True)]}
        if have_llg:
            kinds["llg"] = lambda: [LLGProcessor(lltok, grammar, V)]
        times: dict[str, list[float]] = {k: [] for k in kinds}
        time_generate(model, ids, att, 4, [])  # warm-up
        for r in range(args.repeats):
            for k, make in (list(kinds.items()) if r % 2 == 0 else list(kinds.items())[::-1]):
                torch.manual_seed(r)
                times[k].append(time_generate(model, ids, att, args.new_tokens, make()))
        med = {k: statistics.median(v) for k, v in times.items()}
        per_tok = {k: v / args.new_tokens * 1e3 for k, v in med.items()}
        # median of paired ratios (runs next to each other share the machine's load)
        def paired(k: str) -> float:
            return (statistics.median(a / b for a, b in zip(times[k], times["none"])) - 1) * 100 if k in times else float("nan")

        over, over_id, over_llg = paired("lock"), paired("identity"), paired("llg")
        share = results[f"processor_us_b{B}"]["ours"] / 1e3 / per_tok["none"] * 100
        results[f"generate_b{B}"] = {"ms_per_step": per_tok, "lock_overhead_pct": over, "identity_overhead_pct": over_id,
                                     "llguidance_overhead_pct": over_llg, "processor_share_pct": share}
        print(f"{B:>5} {per_tok['none']:>10.3f} {per_tok['identity']:>10.3f} {over_id:>8.1f}% {per_tok['lock']:>10.3f} "
              f"{over:>8.1f}% {per_tok.get('llg', float('nan')):>11.3f} {over_llg:>8.1f}%   "
              f"(lock processor alone / step: {share:.1f}%)")

    # 3. the server
    if not args.skip_server:
        import openai

        from prealign.serve import ServeConfig, run_in_thread

        print("\n## prealign serve: completion tokens/s (temperature 1, max_tokens 32)")
        print(f"{'concurrency':>11} {'tokens/s':>10} {'requests/s':>11}")
        results["server"] = {}
        with run_in_thread((model, tok), config=ServeConfig(model_name="bench", max_batch=32, max_queue=1024)) as h:
            client = openai.OpenAI(base_url=h.url, api_key="none", max_retries=0, timeout=600)

            def one(i):
                r = client.chat.completions.create(model="bench", max_tokens=32, temperature=1.0,
                                                   messages=[{"role": "user", "content": f"question {i} about the market"}])
                return r.usage.completion_tokens

            one(0)
            for conc in (1, 8, 32):
                n = max(conc * 2, args.server_requests if conc > 1 else args.server_requests // 4)
                t = time.perf_counter()
                with ThreadPoolExecutor(conc) as pool:
                    toks = sum(pool.map(one, range(n)))
                dt = time.perf_counter() - t
                results["server"][str(conc)] = {"tokens_per_s": toks / dt, "requests_per_s": n / dt, "requests": n}
                print(f"{conc:>11} {toks / dt:>10.1f} {n / dt:>11.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
