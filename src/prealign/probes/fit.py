"""Reading a model's hidden states and fitting linear probes on them: the one implementation that
the probe guard's calibration and the per-layer probe survey share.

    .venv/bin/python -c "from prealign.probes.fit import fit_linear_probe; help(fit_linear_probe)"

Layers are numbered as transformers numbers `output_hidden_states`: 0 = the token embeddings,
i = decoder block i (1..L-1), and L = the final norm's output (what the LM head reads).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from prealign.errors import PrealignError


def layer_modules(model) -> list[tuple[str, Any]]:
    """`(name, module)` per probe layer: 0 = token embeddings, i = decoder block i (1..L-1), and
    L = the final norm's output (what the LM head reads; block L's output when there is no norm)."""
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    base = model if base is None else base
    blocks = None
    for name in ("layers", "h", "blocks"):
        cand = getattr(base, name, None)
        if cand is not None and hasattr(cand, "__len__") and len(cand) > 0:
            blocks = cand
            break
    if blocks is None:
        raise PrealignError(f"{type(model).__name__}: cannot find its decoder blocks to probe (looked for layers, h, blocks)")
    out: list[tuple[str, Any]] = [("embeddings", model.get_input_embeddings())]
    out += [(f"block {i + 1}", b) for i, b in enumerate(blocks)][:-1]
    norm = next((getattr(base, n) for n in ("norm", "ln_f", "final_layernorm") if getattr(base, n, None) is not None), None)
    out.append(("final norm", norm) if norm is not None else (f"block {len(blocks)}", blocks[-1]))
    return out


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


class _Tap:
    """Forward hooks that keep the latest output of some layers (whole sequences)."""

    def __init__(self, model, layers: Sequence[int]):
        mods = layer_modules(model)
        bad = [l for l in layers if not 0 <= l < len(mods)]
        if bad:
            raise PrealignError(f"layer(s) {bad} out of range: the model has layers 0..{len(mods) - 1}")
        self.out: dict[int, Any] = {}
        self._handles = [mods[l][1].register_forward_hook(self._make(l)) for l in layers]

    def _make(self, layer: int):
        def hook(module, args, output):
            self.out[layer] = _first(output)
        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def hidden_states(model, seqs: Sequence[np.ndarray], layers: Sequence[int], batch_size: int,
                   progress: Callable[[int], None] | None = None) -> list[list[np.ndarray]]:
    """`out[layer_pos][seq]` = float32 [T, H]: each layer's output at every position (right
    padding with an attention mask, so a causal model's states at real positions are exact)."""
    import torch

    device = next(model.parameters()).device
    tap = _Tap(model, layers)
    out: list[list[np.ndarray]] = [[None] * len(seqs) for _ in layers]  # type: ignore[list-item]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    try:
        with torch.inference_mode():
            for b0 in range(0, len(order), batch_size):
                idx = order[b0:b0 + batch_size]
                T = max(len(seqs[i]) for i in idx)
                ids = torch.zeros((len(idx), T), dtype=torch.long)
                att = torch.zeros((len(idx), T), dtype=torch.long)
                for r, i in enumerate(idx):
                    ids[r, : len(seqs[i])] = torch.as_tensor(seqs[i])
                    att[r, : len(seqs[i])] = 1
                model(input_ids=ids.to(device), attention_mask=att.to(device), use_cache=False)
                for j, l in enumerate(layers):
                    h = tap.out[l].float().cpu().numpy()
                    for r, i in enumerate(idx):
                        out[j][i] = h[r, : len(seqs[i])]
                if progress is not None:
                    progress(len(idx))
    finally:
        tap.close()
    return out


def fit_linear_probe(X: np.ndarray, y: np.ndarray, n_classes: int, C: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A multinomial logistic regression on standardised features, returned as raw-feature
    `(weight [n_classes, H], bias [n_classes])` (the scaler folded in): softmax(x W^T + b)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from threadpoolctl import threadpool_limits

    scaler = StandardScaler().fit(X)
    with threadpool_limits(limits=1):  # a small problem: BLAS threads only fight each other (4× slower here)
        clf = LogisticRegression(C=C, max_iter=1000, random_state=seed).fit(scaler.transform(X), y)
    coef, icpt = clf.coef_.astype(np.float64), clf.intercept_.astype(np.float64)
    if len(clf.classes_) == 2:  # binary: sigmoid(z) = softmax([0, z])[1]
        coef = np.stack([np.zeros_like(coef[0]), coef[0]])
        icpt = np.array([0.0, icpt[0]])
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    W = np.zeros((n_classes, X.shape[1]))
    b = np.full(n_classes, -30.0)  # a class never seen in training is never predicted
    for row, c in enumerate(clf.classes_):
        W[int(c)] = coef[row] / scale
        b[int(c)] = icpt[row] - float((coef[row] / scale) @ scaler.mean_)
    return W.astype(np.float32), b.astype(np.float32)


def softmax_np(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
