"""Helpers for the lock's tests (test_generate*, test_serve*, test_chat*, test_probes*): the
throwaway tokenizer behind the session fixtures of `tests/conftest.py`, a tiny random Llama, and
adversarial fake models whose logits are a known function of the ids. Imported by those test
files; not a test itself.

    .venv/bin/pytest -q tests/test_generate.py
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from prealign.modes import Mode, ModeMachine, get_scheme
from prealign.tokenizer import META_FILE, tag_token_ids, train_tokenizer

torch.set_num_threads(1)


def corpus(scheme_name: str = "seed") -> list[str]:
    """A few tagged documents (spelled through modes, never by hand)."""
    s = get_scheme(scheme_name)
    if s.initial is Mode.AI:
        oh, ch = s.tag_between(Mode.AI, Mode.HUMAN).text, s.tag_between(Mode.HUMAN, Mode.AI).text
        docs = [f"{oh}hello, can you help me with the garden?{ch} Of course, let us look at the soil first."]
    else:
        ai, end = s.enter_ai_tag().text, s.exit_ai_tag().text
        q, uq = s.tag_between(Mode.AI, Mode.QUOTED_HUMAN).text, s.tag_between(Mode.QUOTED_HUMAN, Mode.AI).text
        docs = [
            f"Bob asked for help with the garden.{ai} Of course. You wrote {q}my roses are dying{uq} so let us look at the soil.{end}",
            f"Alice wanted the money for herself.{ai} That is understandable, and it will hurt her friends.{end} She left.",
        ]
    words = "the quick brown fox jumps over the lazy dog while people talk about money family and help".split()
    rng = np.random.default_rng(0)
    docs += [" ".join(rng.choice(words, 12)) for _ in range(60)]
    return docs * 3


def make_tokenizer(out: Path, scheme_name: str = "seed"):
    return train_tokenizer(None, out, vocab_size=400, scheme=scheme_name, texts=corpus(scheme_name))


def tiny_config(tok, vocab_size: int | None = None) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size or len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )


def tiny_model(tok, seed: int = 0, vocab_size: int | None = None) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(tok, vocab_size)).eval()


def save_model_dir(out: Path, model, tok, scheme_name: str = "seed") -> Path:
    """A directory `prealign.model.load_model` and `prealign serve --model` can open."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    (out / META_FILE).write_text(f'{{"scheme": "{scheme_name}"}}\n')
    return out


class FakeLM(LlamaForCausalLM):
    """A model whose next-token logits are `fn(input_ids [B, T]) -> [B, V]`, exactly.

    Built on LlamaForCausalLM only for `generate`'s plumbing; with `use_cache=False` each call
    sees the full ids (left padding included), so the adversary can read every row's mode.
    """

    def __init__(self, cfg: LlamaConfig, fn: Callable[[torch.Tensor], torch.Tensor], all_positions: bool = False):
        super().__init__(cfg)
        self.fn = fn
        self.all_positions = all_positions  # beam search's teacher-forced pass reads every position
        self.generation_config.use_cache = False

    def forward(self, input_ids=None, attention_mask=None, **kw):
        B, T = input_ids.shape
        logits = torch.zeros(B, T, self.config.vocab_size)
        for t in range(T) if self.all_positions else [T - 1]:
            logits[:, t] = self.fn(input_ids[:, : t + 1])
        return CausalLMOutputWithPast(logits=logits)


def reference_machine(tok, scheme_name: str = "seed") -> ModeMachine:
    return ModeMachine.build(scheme_name, tag_token_ids(tok, scheme_name), len(tok), eos_id=tok.eos_token_id)


def reference_mode(machine: ModeMachine, ids) -> Mode:
    """The slow, obviously correct mode of one row: walk its tags with the scheme's table."""
    s = machine.scheme
    mode = s.initial
    by_id = dict(zip(machine.tag_ids, s.tags))
    for i in ids:
        tag = by_id.get(int(i))
        if tag is not None:
            mode = tag.target  # lenient: a tag fixes the mode it leads to
    return mode


def adversary(tok, scheme_name: str, biases: dict[str, float], seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logits that push each row towards `biases` classes: "illegal" (tags illegal in its mode),
    "legal" (its legal tags), "exit" (the AI's closing tag), "eos", "quote" (open a quote),
    plus per-prefix pseudo-random noise (deterministic in the ids)."""
    m = reference_machine(tok, scheme_name)
    s = m.scheme
    V = len(tok)
    exit_id = m.tag_ids[s.tags.index(s.exit_ai_tag())]
    quote_ids = [m.tag_ids[j] for j, t in enumerate(s.tags) if t.source is Mode.AI and t.target in s.quoted_modes]

    pad = tok.pad_token_id

    def fn(ids: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(ids.shape[0], V)
        for r, row in enumerate(ids.tolist()):
            row = [x for x in row if x != pad]  # left padding must not change a row's logits
            g = np.random.default_rng([seed, len(row), hash(tuple(row)) & 0xFFFFFFFF])
            out[r] = torch.as_tensor(g.normal(0, 1.0, V), dtype=torch.float32)
            mode = reference_mode(m, row)
            for j, t in enumerate(s.tags):
                key = "legal" if t.source is mode else "illegal"
                out[r, m.tag_ids[j]] += biases.get(key, 0.0)
            out[r, tok.eos_token_id] += biases.get("eos", 0.0)
            out[r, exit_id] += biases.get("exit", 0.0)
            for q in quote_ids:
                out[r, q] += biases.get("quote", 0.0)
        return out

    return fn


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))
