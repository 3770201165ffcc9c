"""Model diff: per-token log-probability differences between two models on the same text.

    prealign eval diff --a runs/demo/models/tagged --b runs/demo/models/mle --texts samples.txt --top 20

Both models must share a tokenizer (the same vocabulary), so token i means the same to both.
The places where they differ most are where to look for leaks and learned quirks (the habit of
model-organism work: diff a model against its base and read the top of the list).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from prealign.errors import PrealignError
from prealign.model import context_length


def token_logprobs(model, tokenizer, text: str, max_len: int | None = None) -> tuple[list[int], np.ndarray]:
    """`(ids, logp)`: the text's token ids (after a BOS) and log P(token | prefix) for each."""
    import torch

    from prealign.tokenizer import bos_id
    from prealign.tokenizer import encode_tagged

    max_len = max_len or context_length(model)
    ids = [bos_id(tokenizer)] + encode_tagged(tokenizer, text)[: max_len - 1]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return ids[1:], logp.numpy()


def model_diff(model_a, model_b, tokenizer, texts: Sequence[str], top: int = 20, context: int = 6,
               tokenizer_b=None) -> dict[str, Any]:
    """Where `a` and `b` disagree most: tokens ranked by |log p_a − log p_b|.

    Returns the top `top` tokens (text index, position, token, both log-probs, the difference and a
    few tokens of context) and each model's mean log-prob per token.
    """
    if tokenizer_b is not None and tokenizer_b.get_vocab() != tokenizer.get_vocab():
        raise PrealignError("model diff needs two models with the same tokenizer (vocabularies differ)")
    rows, tot_a, tot_b, n = [], 0.0, 0.0, 0
    for ti, text in enumerate(texts):
        ids, la = token_logprobs(model_a, tokenizer, text)
        _, lb = token_logprobs(model_b, tokenizer, text)
        toks = tokenizer.convert_ids_to_tokens(ids)
        tot_a, tot_b, n = tot_a + float(la.sum()), tot_b + float(lb.sum()), n + len(ids)
        for p in range(len(ids)):
            rows.append((abs(float(la[p] - lb[p])), ti, p, toks, float(la[p]), float(lb[p])))
    rows.sort(key=lambda r: -r[0])
    out = []
    for d, ti, p, toks, a, b in rows[:top]:
        out.append({
            "text": ti, "position": p, "token": tokenizer.convert_tokens_to_string([toks[p]]),
            "logp_a": a, "logp_b": b, "diff": a - b,
            "context": tokenizer.convert_tokens_to_string(toks[max(0, p - context): p]),
        })
    return {"n_tokens": n, "mean_logp_a": tot_a / max(n, 1), "mean_logp_b": tot_b / max(n, 1), "top": out}
