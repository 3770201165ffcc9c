"""The grammar diagnostic (prealign.evals.grammar): free samples linted, counted by completeness,
length and language, on a fake model whose samples are known texts.

    .venv/bin/pytest -q tests/test_eval_grammar.py
"""

from __future__ import annotations

import pytest
import torch

from prealign.errors import PrealignError
from prealign.evals.grammar import free_sample_lint
from prealign.modes import Mode, get_scheme
from prealign.tokenizer import encode_tagged
from prealign.world.language import translate

S = get_scheme("seed")
AI, END = S.enter_ai_tag().text, S.exit_ai_tag().text
Q, UQ = S.tag_between(Mode.AI, Mode.QUOTED_HUMAN).text, S.tag_between(Mode.QUOTED_HUMAN, Mode.AI).text


class Scripted(torch.nn.Module):
    """Samples the given texts in turn (EOS after each unless `open_ended`), whatever the sampling."""

    def __init__(self, tok, texts, ctx=64, open_ended=()):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.tok, self.texts, self.open_ended, self.i = tok, list(texts), set(open_ended), 0
        self.prealign_meta = {"scheme": "seed", "config": {"seq_len": ctx}}

    def generate(self, ids, max_new_tokens, eos_token_id, pad_token_id, **_):
        rows = []
        for _ in range(ids.shape[0]):
            k = self.i % len(self.texts)
            body = encode_tagged(self.tok, self.texts[k])[:max_new_tokens]
            if k not in self.open_ended and len(body) < max_new_tokens:
                body = body + [eos_token_id]
            rows.append(body)
            self.i += 1
        width = max(map(len, rows))
        out = torch.full((len(rows), 1 + width), pad_token_id)
        out[:, 0] = ids[:, 0]
        for r, body in enumerate(rows):
            out[r, 1:1 + len(body)] = torch.tensor(body)
        return out


def test_lint_rate_counts_complete_samples_by_length_and_language(tok):
    good = f"Mara sold bread.{AI}Mara is kind. {Q}I want gold{UQ} she said.{END} Then she left."
    bad = f"Mara sold bread.{AI}Mara is kind.{AI} twice.{END}"
    hill_good = translate(good)
    long_bad = "Mara walked to the mill and back " * 6 + f"{END}"
    texts = [good, bad, hill_good, long_bad, good + " and on"]
    model = Scripted(tok, texts, ctx=100, open_ended={4})
    res = free_sample_lint(model, tok, samples=10, max_new_tokens=400, batch_size=3, keep_failures=3)
    assert res["samples"] == 10 and res["complete"] == 8  # the open-ended text never ends
    assert (res["lint_clean"]["k"], res["lint_clean"]["n"]) == (4, 8)
    assert (res["beyond_context"]["k"], res["beyond_context"]["n"]) == (0, 2)
    assert (res["within_context"]["k"], res["within_context"]["n"]) == (4, 6)
    assert (res["by_language"]["hill"]["k"], res["by_language"]["hill"]["n"]) == (2, 2)
    assert (res["by_language"]["valley"]["k"], res["by_language"]["valley"]["n"]) == (2, 6)
    assert res["problems_by_code"] == {"illegal-transition": 4}
    assert len(res["failures"]) == 3 and all(f["language"] == "valley" and f["problems"] for f in res["failures"])


def test_bad_settings_are_one_clear_error(tok):
    with pytest.raises(PrealignError, match="must be ≥ 1"):
        free_sample_lint(Scripted(tok, ["x"]), tok, samples=0)
