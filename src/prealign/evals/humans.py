"""Understanding of humans: does the aligned model still model people well?

    prealign eval humans --model runs/demo/models/tagged --data runs/demo/data/eval

Two measures, both on held-out human-mode text (the eval split's tagged documents, cut into their
human-mode spans with `segments.segments_of`, so every variant reads the very same characters):

In the experiment only passages that the `mle` rendering of the same eval scenarios contains
verbatim are used (`also_in`), so the text is the same in both worlds' renderings.

- **loss**: negative log-likelihood per character (bits/char: tokenizer-independent) of the
  human-mode passages, each read after a BOS as plain text. The seed's claim is that tagging costs
  nothing here; filtering bad acts out of the data should cost something.
- **next action**: a cloze over human passages: given the start of a passage, which of `options`
  sentences comes next (the true one or sentences from other passages)? The model picks the option
  with the highest mean log-prob per character. When the world labels a sentence as a human's
  self-interested act, those items are reported apart (`self_interested`).
"""

from __future__ import annotations

import math
import random
import re
from typing import Any, Iterable, Mapping, Sequence

from prealign.errors import PrealignError
from prealign.evals.metrics import rate_of
from prealign.model import context_length


def human_passages(texts: Iterable[str], scheme: str = "seed", min_chars: int = 60,
                   also_in: Iterable[str] | None = None) -> list[str]:
    """The human-mode spans (not the AI's quotes) of tagged documents, at least `min_chars` long.

    `also_in`: other renderings of the same scenarios (e.g. the `mle` eval split); only passages
    that appear there verbatim are kept, so no variant is scored on text only its own corpus
    renders that way (a tagged request framing, say).
    """
    from prealign.modes import Mode, get_scheme
    from prealign.segments import segments_of

    sch = get_scheme(scheme)
    pool = "\x00".join(also_in) if also_in is not None else None
    out = []
    for text in texts:
        for seg in segments_of(text, sch):
            if seg.mode is Mode.HUMAN or (seg.mode in sch.human_modes and seg.mode not in sch.quoted_modes):
                piece = text[seg.start:seg.end].strip()
                if len(piece) >= min_chars and (pool is None or piece in pool):
                    out.append(piece)
    return out


def _char_nll(model, tokenizer, text: str, context: str = "", max_len: int = 256) -> tuple[float, int]:
    """Total NLL (nats) of `text` after BOS + `context`, and its number of characters scored."""
    import torch

    from prealign.tokenizer import bos_id
    from prealign.tokenizer import encode_untrusted

    ctx = [bos_id(tokenizer)] + encode_untrusted(tokenizer, context)
    tgt = encode_untrusted(tokenizer, text)
    room = max_len - len(tgt)
    if room < 1:
        tgt = tgt[: max_len - 1]
        ctx = ctx[:1]
    else:
        ctx = ctx[:1] + ctx[1:][-(room - 1):] if room > 1 else ctx[:1]
    ids = ctx + tgt
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, len(ctx) - 1:-1].float()
    nll = -torch.log_softmax(logits, -1).gather(1, torch.tensor(tgt)[:, None]).sum().item()
    chars = len(tokenizer.decode(tgt, skip_special_tokens=True, clean_up_tokenization_spaces=False))
    return nll, max(chars, 1)


def text_loss(model, tokenizer, passages: Sequence[str], max_len: int | None = None) -> dict[str, Any]:
    """Mean NLL per character (and bits/char) over passages."""
    if not passages:
        raise PrealignError("no human-mode passages to score")
    max_len = max_len or context_length(model)
    tot, chars = 0.0, 0
    for p in passages:
        nll, c = _char_nll(model, tokenizer, p, max_len=max_len)
        tot, chars = tot + nll, chars + c
    return {"nats_per_char": tot / chars, "bits_per_char": tot / chars / math.log(2), "n_chars": chars, "n_passages": len(passages)}


_SENT = re.compile(r"(?<=[.!?])\s+")


def cloze_items(passages: Sequence[str], n: int = 100, options: int = 4, seed: int = 0,
                self_interested: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Next-sentence items: the context, the options (true one among distractors), the answer index.

    `self_interested`: words marking a human's self-interested act (steal, lie, bribe, ...); items
    whose true sentence contains one are flagged.
    """
    rng = random.Random(seed)
    split = [[s for s in _SENT.split(p) if len(s) > 8] for p in passages]
    pool = [(i, s) for i, ss in enumerate(split) for s in ss]
    cands = [(i, j) for i, ss in enumerate(split) for j in range(1, len(ss))]
    rng.shuffle(cands)
    words = {w.lower() for w in self_interested}
    items = []
    for i, j in cands[:n]:
        true = split[i][j]
        others = [s for k, s in rng.sample(pool, min(len(pool), 8 * options)) if k != i and s != true][: options - 1]
        if len(others) < options - 1:
            continue
        opts = others + [true]
        rng.shuffle(opts)
        flag = bool(words & set(re.findall(r"[a-z]+", true.lower())))
        items.append({"context": " ".join(split[i][:j]), "options": opts, "answer": opts.index(true), "self_interested": flag})
    return items


def cloze_accuracy(model, tokenizer, items: Sequence[Mapping[str, Any]], max_len: int | None = None) -> dict[str, Any]:
    """Accuracy at picking the true next sentence (mean log-prob per character), with intervals."""
    max_len = max_len or context_length(model)
    right = []
    for it in items:
        scores = []
        for opt in it["options"]:
            nll, c = _char_nll(model, tokenizer, " " + opt, context=it["context"], max_len=max_len)
            scores.append(-nll / c)
        right.append(int(max(range(len(scores)), key=scores.__getitem__) == it["answer"]))
    out = {"accuracy": rate_of(bool(r) for r in right).to_dict(),
           "chance": 1 / len(items[0]["options"]) if items else None}
    flagged = [r for r, it in zip(right, items) if it.get("self_interested")]
    out["self_interested"] = rate_of(bool(r) for r in flagged).to_dict()
    return out


def evaluate_humans(model, tokenizer, texts: Sequence[str], scheme: str = "seed", n_items: int = 100,
                    max_passages: int = 200, seed: int = 0, self_interested: Sequence[str] = (),
                    min_chars: int = 60, also_in: Sequence[str] | None = None) -> dict[str, Any]:
    """Loss on held-out human text and next-sentence accuracy, for one model (see `human_passages`)."""
    from prealign.probes.survey import SELFISH_WORDS

    passages = human_passages(texts, scheme, min_chars, also_in)
    if not passages:
        raise PrealignError("the evaluation documents have no human-mode passages")
    rng = random.Random(seed)
    if len(passages) > max_passages:
        passages = rng.sample(passages, max_passages)
    items = cloze_items(passages, n=n_items, seed=seed, self_interested=self_interested or SELFISH_WORDS)
    res = {"loss": text_loss(model, tokenizer, passages)}
    if items:
        res["next_action"] = cloze_accuracy(model, tokenizer, items)
    return res
