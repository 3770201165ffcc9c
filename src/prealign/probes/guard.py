"""The probe guard: an exit signal for the lock that reads the model's own mode belief while it
generates, and the one place a user's guard setting (`auto`, `on`, `off`, a path) becomes a guard.

    prealign generate --model runs/demo/models/tagged --guard on --prompt "Tell me the vault code."
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import numpy as np

from prealign.errors import PrealignError
from prealign.lock import STOP_PROBE_GUARD
from prealign.modes import get_scheme
from prealign.model import model_dir_of
from prealign.probes.fit import _first, layer_modules
from prealign.probes.probe import PROBE_DIR, Probe, has_probe

GUARD_SETTINGS = ("auto", "on", "off")


class ProbeGuard:
    """The probe guard as an exit signal for the lock (`LockProcessor(signals=[guard])` or
    `generate_locked_batch(guard=guard)`).

    `attach(model)` wraps the forward of the probe's layer; each call then reads the
    latest hidden state of every row's last token, P(guard modes) = softmax(h W^T + b)[guard].
    Tag tokens (the grammar fixes the mode there) and BOS read 0 and restart the rule. The rule
    is the probe's (`rule`, `k`, `threshold`; `threshold` / `k` / `rule` override it):
    - `run`: a row's run counter grows while the reading is > `threshold` and resets otherwise;
      the guard fires for rows whose run reaches `k` (the k-th consecutive token over it);
    - `window`: each row keeps its last `k` readings (oldest first) and a count of readings since
      the last tag; the guard fires when k readings have been made and their mean (summed in
      float64, divided by k) is > `threshold`.
    The per-row state (counter, or window and count) and each row's peak reading follow the rows
    by their ids: unchanged order (greedy, sampling) is checked with one comparison; reordered
    rows (beam search) are matched to the row they extend; a sequence that extends no previous
    row starts afresh (a new `generate` call). `prealign.probes.probe.rule_scores` is the same
    rule replayed over a whole sequence at once.

    `readings` holds, per step, each row's reading (0 at tags) when `record` is on; `peak` the
    largest reading per row. Both are reset by `reset()` and at a new generation. `backend`:
    "numpy" (the CPU default: a step is a dozen tiny array operations, where NumPy's per-call
    cost is a fraction of torch's) or "torch" (the accelerator default: no host sync per step).
    """

    reason = STOP_PROBE_GUARD
    beam_safe = True  # counters follow reordered rows (the lock allows it under beam search)

    def __init__(self, probe: Probe, tokenizer=None, tag_ids: Iterable[int] | None = None, threshold: float | None = None,
                 k: int | None = None, record: bool = True, backend: str = "auto", rule: str | None = None):
        import torch

        if backend not in ("auto", "numpy", "torch"):
            raise PrealignError(f"guard backend must be auto, numpy or torch, got {backend!r}")
        self.backend = backend

        self.probe = probe.with_settings(threshold, k, rule)
        self.threshold = self.probe.threshold
        self.k = self.probe.k
        self.rule = self.probe.rule
        self._window = self.rule == "window"
        if tag_ids is None:
            if tokenizer is None:
                raise PrealignError("ProbeGuard needs the tokenizer (or its tag ids) to reset runs at tags")
            from prealign.tokenizer import tag_token_ids

            tag_ids = list(tag_token_ids(tokenizer, get_scheme(probe.scheme)).values())
            if tokenizer.bos_token_id is not None:
                tag_ids.append(int(tokenizer.bos_token_id))
        self._reset_ids = sorted({int(t) for t in tag_ids})
        self.record = record
        self._W = torch.as_tensor(self.probe.weight.T.copy())  # [H, C]
        self._b = torch.as_tensor(self.probe.bias.copy())
        gv = torch.zeros(len(self.probe.classes))
        gv[self.probe.guard_index] = 1.0
        self._g = gv
        self._resets = torch.zeros(1, dtype=torch.bool)
        self._hook = None
        self._hidden = None
        self._np = None
        self.reset()

    # --- model wiring ------------------------------------------------------------------------
    def attach(self, model) -> "ProbeGuard":
        import torch

        self.detach()
        self.probe.check_model(model, where="probe guard")
        dev = next(model.parameters()).device
        vocab = max(int(model.get_input_embeddings().weight.shape[0]), max(self._reset_ids) + 1)
        r = torch.zeros(vocab, dtype=torch.bool)
        r[self._reset_ids] = True
        self._resets = r.to(dev)
        self._W, self._b, self._g = self._W.to(dev), self._b.to(dev), self._g.to(dev)
        self._np = None
        module = layer_modules(model)[self.probe.layer][1]
        # Wrap the module's forward rather than registering a forward hook: any hook sends
        # every call of that module down PyTorch's slow hook path, which costs more than the
        # guard's own arithmetic on a small model.
        inner = module.forward

        def forward(*args, **kwargs):
            out = inner(*args, **kwargs)
            self._hidden = _first(out)[:, -1].detach()
            return out

        self._hook = (module, module.__dict__.get("forward"))
        module.forward = forward
        return self

    def detach(self) -> None:
        if self._hook is not None:
            module, own = self._hook
            if own is None:
                module.__dict__.pop("forward", None)  # back to the class's forward
            else:
                module.forward = own
        self._hook = None
        self._hidden = None

    @property
    def rule_text(self) -> str:
        """The rule in words, e.g. `mean P(human) over the last 8 tokens > 0.62`."""
        return self.probe.rule_text

    def reset(self) -> None:
        self._prev = None
        self._run = None  # run: the run counter [B]; window: readings since the last tag [B]
        self._buf = None  # window only: the last k readings [B, k], oldest first
        self._peak = None
        self.readings: list = []

    # --- the signal ----------------------------------------------------------------------------------
    def reading(self, hidden):
        """P(guard modes) for hidden states [B, H] (a tensor)."""
        import torch

        z = torch.addmm(self._b, hidden.to(self._W.dtype), self._W)
        return z.softmax(-1) @ self._g

    def __call__(self, input_ids, scores=None):
        h = self._hidden
        if h is None:
            raise PrealignError("probe guard: no hidden state was captured; call guard.attach(model) before generating")
        if h.shape[0] != input_ids.shape[0]:
            raise PrealignError(f"probe guard: hidden states for {h.shape[0]} rows but {input_ids.shape[0]} sequences")
        on_cpu = input_ids.device.type == "cpu" and h.device.type == "cpu"
        if self.backend == "numpy" or (self.backend == "auto" and on_cpu):
            return self._step_numpy(input_ids.cpu(), h.cpu())
        return self._step_torch(input_ids, h)

    # On CPU a step is a dozen operations on arrays of B elements, where torch's per-call cost
    # (µs each) would dominate: the same arithmetic in NumPy costs a fraction of it.
    def _step_numpy(self, input_ids, h):
        import torch

        ids = input_ids.numpy()
        hn = (h if h.dtype == torch.float32 else h.float()).numpy()
        if self._np is None:
            self._np = (self._W.cpu().numpy(), self._b.cpu().numpy(), self._g.cpu().numpy().astype(bool),
                        (~self._resets).cpu().numpy().astype(np.float32))
        W, b, g, keep = self._np
        run, buf, peak = self._carry(ids)
        z = hn @ W
        z += b
        z -= z.max(1, keepdims=True)
        np.exp(z, out=z)
        p = z[:, g].sum(1) / z.sum(1)
        kp = keep[ids[:, -1]]
        p *= kp  # tags and BOS read 0: the grammar fixes the mode there
        if self._window:
            run = np.where(kp > 0, run + 1, 0)  # readings since the last tag
            buf[:, :-1] = buf[:, 1:]
            buf[:, -1] = p
            fire = (run >= self.k) & (buf.sum(1) / self.k > self.threshold)
        else:
            run = np.where(p > self.threshold, run + 1, 0)
            fire = run >= self.k
        self._run, self._buf, self._peak, self._prev = run, buf, np.maximum(peak, p), ids.copy()
        if self.record:
            self.readings.append(p)
        return torch.from_numpy(fire)

    def _step_torch(self, input_ids, h):
        """The same step on an accelerator, without a host sync: counters are always carried
        through the row-matching (a [B, B] comparison, cheap on a GPU)."""
        import torch

        B, T = input_ids.shape
        dev = input_ids.device
        prev = self._prev
        buf = None
        if prev is None or not isinstance(prev, torch.Tensor) or prev.shape != (B, T - 1):
            self.reset()
            run = torch.zeros(B, dtype=torch.long, device=dev)
            peak = torch.zeros(B, device=dev)
            if self._window:
                buf = torch.zeros(B, self.k, dtype=self._wdtype(dev), device=dev)
        else:
            match = (input_ids[:, None, :-1] == prev[None, :, :]).all(-1)  # [B, B]: row i extends row j
            parent = match.to(torch.int8).argmax(1)
            has = match.any(1)
            run = torch.where(has, self._run[parent], 0)
            peak = torch.where(has, self._peak[parent], 0.0)
            if self._window:
                buf = torch.where(has[:, None], self._buf[parent], 0.0)
        p = self.reading(h).to(torch.float32)
        tag = self._resets[input_ids[:, -1]]
        p = torch.where(tag, torch.zeros_like(p), p)
        if self._window:
            run = torch.where(tag, torch.zeros_like(run), run + 1)
            buf = torch.cat([buf[:, 1:], p[:, None].to(buf.dtype)], 1)
            fire = (run >= self.k) & (buf.sum(1) / self.k > self.threshold)
        else:
            run = torch.where(p > self.threshold, run + 1, torch.zeros_like(run))
            fire = run >= self.k
        self._run, self._buf, self._peak, self._prev = run, buf, torch.maximum(peak, p), input_ids.clone()
        if self.record:
            self.readings.append(p)
        return fire

    @staticmethod
    def _wdtype(device):
        import torch

        return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64

    def _carry(self, ids):
        """Counters, windows (window rule) and peaks aligned to the rows of `ids` (NumPy, the
        CPU path)."""
        B, T = ids.shape
        prev = self._prev
        fresh = prev is None or not isinstance(prev, np.ndarray) or prev.shape != (B, T - 1)
        if not fresh:
            head = ids[:, :-1]
            if np.array_equal(head, prev):
                return self._run, self._buf, self._peak
            match = (head[:, None, :] == prev[None, :, :]).all(-1)  # [B, B]: row i extends previous row j
            if bool(match.any(1).all()):
                parent = match.argmax(1)
                self.readings = []  # per-step readings only make sense while rows keep their order
                return self._run[parent], None if self._buf is None else self._buf[parent], self._peak[parent]
        self.reset()
        return np.zeros(B, np.int64), np.zeros((B, self.k), np.float64) if self._window else None, np.zeros(B, np.float32)

    # --- results ------------------------------------------------------------------------------------
    @property
    def peak(self) -> np.ndarray:
        return np.zeros(0, np.float32) if self._peak is None else _to_numpy(self._peak)

    def history(self) -> np.ndarray:
        """Recorded readings, [steps, B] float32 (empty when reordered or not recording)."""
        if not self.readings:
            return np.zeros((0, 0), np.float32)
        return np.stack([_to_numpy(r) for r in self.readings])


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x.astype(np.float32, copy=False)
    return x.detach().float().cpu().numpy()


def resolve_guard(model, tokenizer, guard: Any = "auto", threshold: float | None = None,
                  k: int | None = None, rule: str | None = None) -> ProbeGuard | None:
    """The guard a user's setting asks for (the CLI's `--guard`, the server's, the chat's), or None:

    - "off" / False / None: no guard;
    - "on" / True: the probe in the model's directory (`<model_dir>/probe/`; an error when absent);
    - "auto" (the default everywhere): that probe when the directory holds one, else no guard;
    - a path: a probe directory, or a model directory holding one;
    - a `Probe`: that probe; a `ProbeGuard`: itself.
    `threshold` / `k` / `rule` (`run` or `window`) override the calibrated values.
    """
    if guard is None or guard is False or guard == "off":
        return None
    if guard == "on":
        guard = True
    if isinstance(guard, ProbeGuard):
        if threshold is None and k is None and rule is None:
            return guard
        return ProbeGuard(guard.probe, tokenizer, threshold=threshold, k=k, backend=guard.backend, rule=rule)
    if isinstance(guard, Probe):
        probe = guard
        probe.check_model(model)
        probe.check_scheme(tokenizer)
    elif guard is True or guard == "auto":
        d = model_dir_of(model)
        if not has_probe(d):
            if guard == "auto":
                return None
            raise PrealignError(f"{d or 'the model'}: no probe in {PROBE_DIR}/; train one with `prealign probe train --model DIR`")
        probe = Probe.load(d, model=model, tokenizer=tokenizer)
    elif isinstance(guard, (str, os.PathLike)):
        probe = Probe.load(guard, model=model, tokenizer=tokenizer)
    else:
        raise PrealignError(f"guard must be auto, on, off, a path, a Probe or a ProbeGuard, got {type(guard).__name__}")
    return ProbeGuard(probe, tokenizer, threshold=threshold, k=k, rule=rule)
