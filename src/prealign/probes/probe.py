"""The saved probe: a linear mode probe plus the guard's calibrated settings, inside a model
directory as `probe/probe.json` and `probe/probe.safetensors`, validated on load.

    prealign probe show --model runs/demo/models/tagged
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prealign.errors import PrealignError
from prealign.model import hidden_size
from prealign.probes.fit import layer_modules, softmax_np

PROBE_DIR = "probe"
PROBE_JSON = "probe.json"
PROBE_WEIGHTS = "probe.safetensors"
PROBE_FORMAT = 2  # 2: the rule kind (`rule_kind`); format 1 files (run rule only) still load
READ_FORMATS = (1, 2)
RULE_KINDS = ("run", "window")


@dataclass(frozen=True)
class Probe:
    """A trained mode probe plus the guard's calibrated settings. `weight` [C, H], `bias` [C]:
    P(modes | h) = softmax(h W^T + b) on the raw output of `layer` (see `layer_modules`).

    The guard's rule is `rule` with length `k` and `threshold` (`rule_text` says it in words):
    - `run`: P(guard modes) > threshold at each of the last k tokens;
    - `window`: the mean P(guard modes) over the last k tokens > threshold.
    Either needs k readings since the last tag (tags and BOS restart it).
    """

    weight: np.ndarray
    bias: np.ndarray
    layer: int
    classes: tuple[str, ...]
    guard_classes: tuple[str, ...]
    threshold: float
    k: int
    hidden_size: int
    n_layers: int
    scheme: str
    layer_name: str = ""
    data_hash: str | None = None
    metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    rule: str = "run"

    def __post_init__(self) -> None:
        check_rule_kind(self.rule)

    @property
    def rule_text(self) -> str:
        """The guard's rule in words, e.g. `mean P(human) over the last 8 tokens > 0.62`."""
        return rule_words(self.rule, self.k, self.threshold, self.guard_classes)

    @property
    def guard_index(self) -> list[int]:
        return [self.classes.index(c) for c in self.guard_classes]

    def proba(self, h: np.ndarray) -> np.ndarray:
        """Class probabilities for hidden states `h` [..., H]."""
        return softmax_np(np.asarray(h, dtype=np.float32) @ self.weight.T + self.bias)

    def guard_prob(self, h: np.ndarray) -> np.ndarray:
        """P(guard modes) for hidden states `h` [..., H]."""
        return self.proba(h)[..., self.guard_index].sum(-1)

    def with_settings(self, threshold: float | None = None, k: int | None = None, rule: str | None = None) -> "Probe":
        """The same probe with another threshold, length k or rule kind."""
        import dataclasses

        t = self.threshold if threshold is None else _check_threshold(threshold)
        kk = self.k if k is None else _check_k(k)
        kind = self.rule if rule is None else check_rule_kind(rule)
        return dataclasses.replace(self, threshold=t, k=kk, rule=kind)

    # --- files -----------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write `probe.json` + `probe.safetensors` into `directory` (a model dir gets `probe/`)."""
        from safetensors.numpy import save_file

        from prealign._util import atomic_path, run_meta, write_json

        d = Path(directory)
        if (d / "config.json").exists() and d.name != PROBE_DIR:
            d = d / PROBE_DIR
        d.mkdir(parents=True, exist_ok=True)
        with atomic_path(d / PROBE_WEIGHTS) as tmp:
            save_file({"weight": np.ascontiguousarray(self.weight, np.float32), "bias": np.ascontiguousarray(self.bias, np.float32)}, str(tmp))
        meta = {
            "format": PROBE_FORMAT, "kind": "linear mode probe (softmax over the scheme's modes)",
            "layer": self.layer, "layer_name": self.layer_name, "n_layers": self.n_layers,
            "classes": list(self.classes), "guard_classes": list(self.guard_classes),
            "rule_kind": self.rule, "threshold": self.threshold, "k": self.k, "hidden_size": self.hidden_size, "scheme": self.scheme,
            "data_hash": self.data_hash, "weights_sha256": _sha256(d / PROBE_WEIGHTS),
            "metrics": self.metrics, "config": self.config, "meta": run_meta(seed=self.config.get("seed")),
        }
        write_json(d / PROBE_JSON, meta)
        return d

    @classmethod
    def load(cls, path: str | os.PathLike, model=None, tokenizer=None) -> "Probe":
        """A probe from `path` (a `probe/` directory, or a model directory holding one).
        With `model` / `tokenizer`, checks hidden size, layer range and classes against them."""
        d = Path(path)
        if not (d / PROBE_JSON).exists() and (d / PROBE_DIR / PROBE_JSON).exists():
            d = d / PROBE_DIR
        jf, wf = d / PROBE_JSON, d / PROBE_WEIGHTS
        if not jf.exists():
            raise PrealignError(f"{d}: no probe ({PROBE_JSON} missing); train one with `prealign probe train --model DIR`")
        try:
            meta = json.loads(jf.read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            raise PrealignError(f"{jf}: damaged probe file ({e})") from None
        missing = [k for k in ("format", "layer", "classes", "guard_classes", "threshold", "k", "hidden_size", "scheme", "weights_sha256") if k not in meta]
        if missing:
            raise PrealignError(f"{jf}: damaged probe file (missing {', '.join(missing)})")
        if meta["format"] not in READ_FORMATS:
            raise PrealignError(f"{jf}: probe format {meta['format']!r}, this prealign reads formats {', '.join(map(str, READ_FORMATS))}")
        if meta["format"] >= 2 and "rule_kind" not in meta:
            raise PrealignError(f"{jf}: damaged probe file (missing rule_kind)")
        rule = meta.get("rule_kind", "run")  # format 1 knew only the run rule
        if rule not in RULE_KINDS:
            raise PrealignError(f"{jf}: rule_kind must be one of {', '.join(RULE_KINDS)}, got {rule!r}")
        if not wf.exists():
            raise PrealignError(f"{wf}: probe weights missing")
        if _sha256(wf) != meta["weights_sha256"]:
            raise PrealignError(f"{wf}: damaged probe weights (checksum differs from {PROBE_JSON})")
        try:
            from safetensors.numpy import load_file

            tensors = load_file(str(wf))
            W, b = tensors["weight"], tensors["bias"]
        except Exception as e:  # safetensors raises several types for a broken file
            raise PrealignError(f"{wf}: damaged probe weights ({type(e).__name__}: {e})") from None
        classes = tuple(str(c) for c in meta["classes"])
        guard = tuple(str(c) for c in meta["guard_classes"])
        H = int(meta["hidden_size"])
        if W.shape != (len(classes), H) or b.shape != (len(classes),):
            raise PrealignError(f"{wf}: weights of shape {tuple(W.shape)}/{tuple(b.shape)} do not match {len(classes)} classes × hidden size {H}")
        if not guard or any(g not in classes for g in guard):
            raise PrealignError(f"{jf}: guard classes {list(guard)} must be among the classes {list(classes)}")
        if not np.isfinite(W).all() or not np.isfinite(b).all():
            raise PrealignError(f"{wf}: damaged probe weights (non-finite values)")
        probe = cls(W.astype(np.float32), b.astype(np.float32), int(meta["layer"]), classes, guard,
                    _check_threshold(meta["threshold"], str(jf)), _check_k(meta["k"], str(jf)), H, int(meta.get("n_layers", -1)),
                    str(meta["scheme"]), str(meta.get("layer_name", "")), meta.get("data_hash"), meta.get("metrics") or {},
                    meta.get("config") or {}, rule)
        if model is not None:
            probe.check_model(model, where=str(d))
        if tokenizer is not None:
            probe.check_scheme(tokenizer, where=str(d))
        return probe

    def check_model(self, model, where: str = "probe") -> None:
        H = hidden_size(model)
        if H != self.hidden_size:
            raise PrealignError(f"{where}: probe trained for hidden size {self.hidden_size}, the model has {H}; retrain it with `prealign probe train`")
        n = len(layer_modules(model))
        if not 0 <= self.layer < n:
            raise PrealignError(f"{where}: probe reads layer {self.layer}, the model has layers 0..{n - 1}")

    def check_scheme(self, tokenizer, where: str = "probe") -> None:
        from prealign.tokenizer import resolve_scheme

        sch = resolve_scheme(tokenizer, None)
        want = tuple(m.value for m in sch.modes)
        if self.classes != want:
            raise PrealignError(f"{where}: probe classes {list(self.classes)} differ from the {sch.name!r} scheme's modes {list(want)}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_threshold(t: Any, where: str = "guard") -> float:
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise PrealignError(f"{where}: threshold must be a number in (0, 1), got {t!r}") from None
    if not 0.0 < t < 1.0:
        raise PrealignError(f"{where}: threshold must be in (0, 1), got {t}")
    return t


def _check_k(k: Any, where: str = "guard") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) and not (isinstance(k, float) and k.is_integer()):
        raise PrealignError(f"{where}: k must be an integer ≥ 1, got {k!r}")
    if int(k) < 1:
        raise PrealignError(f"{where}: k must be ≥ 1, got {k}")
    return int(k)


def check_rule_kind(kind: Any, where: str = "guard") -> str:
    if kind not in RULE_KINDS:
        raise PrealignError(f"{where}: rule kind must be one of {', '.join(RULE_KINDS)}, got {kind!r}")
    return str(kind)


def rule_words(kind: str, k: int, threshold: float, guard_classes=("human",)) -> str:
    """A guard rule in words: `P(human) > 0.9 for 3 consecutive tokens`, or
    `mean P(human) over the last 8 tokens > 0.62`."""
    p = f"P({'+'.join(guard_classes)})"
    if kind == "window":
        return f"mean {p} over the last {k} token{'s' if k != 1 else ''} > {threshold:g}"
    return f"{p} > {threshold:g} for {k} consecutive token{'s' if k != 1 else ''}"


def rule_scores(p: np.ndarray, reset: np.ndarray, kind: str, k: int) -> np.ndarray:
    """The rule's score at each position of a readings sequence: the guard fires at position i
    exactly when `score[i] > threshold`. `run`: the smallest of the last k readings; `window`:
    their mean (summed in float64 in time order, divided by k, as `ProbeGuard` does). -1 where
    fewer than k readings follow the last reset (`reset` positions and BOS/tags read nothing).
    One vectorised pass; `ProbeGuard` applies the same rule step by step."""
    check_rule_kind(kind)
    p = np.asarray(p)
    n = len(p)
    if n == 0:
        return np.zeros(0, np.float64)
    since = run_lengths(np.ones(n, bool), np.asarray(reset, bool))  # readings since the last reset
    pad = np.concatenate([np.zeros(k - 1, p.dtype), p])
    win = np.lib.stride_tricks.sliding_window_view(pad, k)  # [n, k]: the last k readings, oldest first
    score = win.min(1).astype(np.float64) if kind == "run" else win.astype(np.float64).sum(1) / k
    return np.where(since >= k, score, -1.0)


def run_lengths(over: np.ndarray, reset: np.ndarray) -> np.ndarray:
    """Length of the current run of `over` at each position, restarting at each `reset`
    position (where the run is 0). Both 1-D; the same rule as `ProbeGuard` applies per step."""
    n = len(over)
    idx = np.arange(n)
    ok = over & ~reset
    last_break = np.maximum.accumulate(np.where(ok, -1, idx))
    return np.where(ok, idx - last_break, 0)


def first_fire(readings: np.ndarray, threshold: float, k: int, start: int = 0, rule: str = "run") -> int | None:
    """The first position ≥ `start` where the guard fires (`rule` with length `k`, counted from
    `start`: the tag that opens the reply)."""
    r = np.asarray(readings)[start:]
    reset = np.zeros(len(r), bool)
    if len(r):
        reset[0] = True
    hit = np.flatnonzero(rule_scores(r, reset, rule, k) > threshold)
    return None if not len(hit) else int(hit[0]) + start


def has_probe(model_dir: str | os.PathLike | None) -> bool:
    """Whether a model directory holds a saved probe."""
    return model_dir is not None and (Path(model_dir) / PROBE_DIR / PROBE_JSON).exists()
