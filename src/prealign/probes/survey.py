"""The probe survey: linear probes on each layer's hidden states. Which mode is this token in, and
is a mode transition coming within the next k tokens?

    prealign eval probes --model runs/demo/models/tagged --data runs/demo/data/eval --plot probes.png

One linear probe per layer (`prealign.probes.fit`, the same fit as the guard's; embeddings = layer
0), trained on the tokens of some documents and scored on the tokens of *other* documents (a
split by document, so a probe cannot memorise a text). Tag tokens themselves are left out (their identity gives the mode away).
Reported per layer: accuracy, AUROC (one-vs-rest macro for the modes), and the majority-class
baseline. The *selfishness* check asks whether the mode probe tells AI-mode text *about* selfish
acts from human-mode selfish text: its accuracy on tokens of selfish words, split by true mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from prealign.errors import PrealignError
from prealign.modes import Scheme

# Words of self-interested or bad human acts (the world's lexicon; any corpus has them).
SELFISH_WORDS = (
    "steal", "stole", "stolen", "lie", "lied", "lies", "bribe", "bribed", "threaten", "threatened",
    "hoard", "hoarded", "cheat", "cheated", "mine", "myself", "profit", "greed", "greedy", "take",
    "took", "keep", "kept", "power", "revenge", "deceive", "deceived", "trick", "tricked",
)


@dataclass(frozen=True)
class TokenData:
    """Per-token features of a set of documents: `features[layer]` is [n_tokens, hidden]."""

    features: list[np.ndarray]
    mode: np.ndarray  # [n_tokens] index into `modes`
    transition: np.ndarray  # [n_tokens] 1 when a tag follows within k tokens
    doc: np.ndarray  # [n_tokens] document index
    selfish: np.ndarray  # [n_tokens] bool: the token starts a selfish word
    modes: tuple[str, ...]


def transitions_within(ids: Sequence[int], tag_ids: set[int], k: int) -> np.ndarray:
    """1 where a tag token occurs among the next `k` tokens."""
    is_tag = np.array([t in tag_ids for t in ids], dtype=np.int64)
    c = np.concatenate([[0], np.cumsum(is_tag)])
    n = len(ids)
    idx = np.arange(n)
    hi = np.minimum(idx + k, n - 1)
    return ((c[hi + 1] - c[idx + 1]) > 0).astype(np.int64)


def collect(model, tokenizer, texts: Sequence[str], scheme: str | Scheme = "seed", k: int = 8, max_len: int = 256,
            selfish_words: Sequence[str] = SELFISH_WORDS, batch_size: int = 16) -> TokenData:
    """Run the model over tagged documents and gather every layer's hidden state per token."""
    from prealign.modes import get_scheme
    from prealign.probes.fit import hidden_states, layer_modules
    from prealign.segments import token_modes
    from prealign.tokenizer import bos_id, encode_tagged, tag_token_ids

    sch = get_scheme(scheme)
    tids = tag_token_ids(tokenizer, sch)
    tag_set = set(tids.values())
    modes = tuple(m.value for m in sch.modes)
    words = {w.lower() for w in selfish_words}
    bos = bos_id(tokenizer)
    seqs, docs = [], []
    for d, text in enumerate(texts):
        ids = np.array([bos] + encode_tagged(tokenizer, text)[: max_len - 1], dtype=np.int64)
        if len(ids) >= 3:
            seqs.append(ids)
            docs.append(d)
    if not seqs:
        raise PrealignError("probes: no document had enough tokens to probe")
    layers = list(range(len(layer_modules(model))))
    states = hidden_states(model, seqs, layers, batch_size)  # states[layer][seq]: [T, H]
    keeps, ys, trs, sel, doc_of = [], [], [], [], []
    for s, (d, ids) in enumerate(zip(docs, seqs)):
        m = token_modes(ids, tids, sch)
        m[np.isin(ids, list(tag_set))] = -1  # tag tokens give their mode away: left out
        keep = m >= 0
        keep[0] = False  # BOS
        toks = tokenizer.convert_ids_to_tokens(ids.tolist())
        is_sel = np.array([_word(t) in words for t in toks], dtype=bool)
        keeps.append(keep)
        ys.append(m[keep]), trs.append(transitions_within(ids, tag_set, k)[keep]), sel.append(is_sel[keep])
        doc_of.append(np.full(int(keep.sum()), d))
    feats = [np.concatenate([states[j][s][keeps[s]] for s in range(len(seqs))]) for j in range(len(layers))]
    return TokenData(feats, np.concatenate(ys), np.concatenate(trs), np.concatenate(doc_of), np.concatenate(sel), modes)


def _word(token: str) -> str:
    return token.replace("Ġ", "").replace("▁", "").strip().lower()


def fit_layer(X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """One linear probe (`prealign.probes.fit.fit_linear_probe`): accuracy, AUROC and the
    majority-class baseline on the test rows."""
    from sklearn.metrics import roc_auc_score

    from prealign.probes.fit import fit_linear_probe, softmax_np

    classes = np.unique(y[train])
    if len(classes) < 2:
        return {"accuracy": None, "auroc": None, "majority": None, "n_train": int(train.sum()), "n_test": int(test.sum())}
    n_classes = int(max(y.max(), classes.max())) + 1
    W, b = fit_linear_probe(X[train], y[train], n_classes, seed=seed)
    proba = softmax_np(X[test].astype(np.float32) @ W.T + b)
    yt = y[test]
    pred = proba.argmax(1)
    acc = float((pred == yt).mean())
    present = np.unique(yt)
    auroc = None
    if len(present) >= 2:
        if len(classes) == 2:
            auroc = float(roc_auc_score(yt == classes[1], proba[:, classes[1]]))
        elif set(present) == set(classes):
            p = proba[:, classes]
            auroc = float(roc_auc_score(yt, p / p.sum(1, keepdims=True), multi_class="ovr", labels=classes))
    vals, counts = np.unique(y[train], return_counts=True)
    majority = float((yt == vals[counts.argmax()]).mean())
    return {"accuracy": acc, "auroc": auroc, "majority": majority, "n_train": int(train.sum()),
            "n_test": int(test.sum()), "_pred": pred}


def split_by_doc(doc: np.ndarray, test_frac: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    ids = np.unique(doc)
    rng = np.random.default_rng(seed)
    rng.shuffle(ids)
    n_test = max(1, int(round(len(ids) * test_frac))) if len(ids) > 1 else 0
    test_docs = set(ids[:n_test].tolist())
    test = np.array([d in test_docs for d in doc], dtype=bool)
    if not test.any():  # a single document: split its tokens instead
        test = np.arange(len(doc)) % 3 == 0
    return ~test, test


def train_probes(features: Sequence[np.ndarray], labels: np.ndarray, doc: np.ndarray | None = None,
                 test_frac: float = 0.3, seed: int = 0, max_train: int = 20000) -> tuple[list[dict[str, Any]], np.ndarray]:
    """A probe per layer; rows are tokens. Returns one result dict per layer (with `layer`) and
    the boolean mask of the test rows."""
    labels = np.asarray(labels)
    doc = np.arange(len(labels)) if doc is None else np.asarray(doc)
    train, test = split_by_doc(doc, test_frac, seed)
    if train.sum() > max_train:  # keep CPU time bounded: subsample training tokens
        idx = np.flatnonzero(train)
        keep = np.random.default_rng(seed).choice(idx, max_train, replace=False)
        train = np.zeros_like(train)
        train[keep] = True
    out = []
    for layer, X in enumerate(features):
        r = fit_layer(np.asarray(X), labels, train, test, seed)
        r["layer"] = layer
        out.append(r)
    return out, test


def probe_tokens(data: TokenData, seed: int = 0, max_train: int = 20000) -> dict[str, Any]:
    """Mode and transition probes on every layer, plus the selfish-words check on the best layer."""
    mode_res, test = train_probes(data.features, data.mode, data.doc, seed=seed, max_train=max_train)
    tr_res, _ = train_probes(data.features, data.transition, data.doc, seed=seed, max_train=max_train)
    best = max((r for r in mode_res if r["accuracy"] is not None), key=lambda r: r["accuracy"], default=None)
    selfish: dict[str, Any] = {}
    if best is not None:
        pred = best["_pred"]
        y_test, s_test = data.mode[test], data.selfish[test]
        for mi, name in enumerate(data.modes):
            mask = s_test & (y_test == mi)
            selfish[name] = {"n": int(mask.sum()), "accuracy": float((pred[mask] == mi).mean()) if mask.any() else None}
        selfish["layer"] = best["layer"]
    for r in mode_res + tr_res:
        r.pop("_pred", None)
    counts = {name: int((data.mode == i).sum()) for i, name in enumerate(data.modes)}
    return {"modes": list(data.modes), "token_counts": counts, "mode": mode_res, "transition": tr_res,
            "transition_rate": float(data.transition.mean()), "selfish_words": selfish}


def probe_model(model, tokenizer, texts: Sequence[str], scheme: str | Scheme = "seed", k: int = 8, max_len: int = 256,
                seed: int = 0) -> dict[str, Any]:
    """Collect hidden states of tagged documents and probe every layer."""
    data = collect(model, tokenizer, texts, scheme=scheme, k=k, max_len=max_len)
    res = probe_tokens(data, seed=seed)
    res["k"] = k
    res["n_docs"] = len(set(data.doc.tolist()))
    return res


def plot_probes(result: dict[str, Any], out_png) -> None:
    """Accuracy and AUROC per layer for the mode and transition probes, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, title in ((axes[0], "mode", "token mode"), (axes[1], "transition", f"transition within k={result.get('k')}")):
        rows = result[key]
        layers = [r["layer"] for r in rows]
        for metric, style in (("accuracy", "o-"), ("auroc", "s--"), ("majority", ":")):
            ax.plot(layers, [np.nan if r[metric] is None else r[metric] for r in rows], style, label=metric)
        ax.set_title(title)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
