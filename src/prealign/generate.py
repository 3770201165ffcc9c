"""Generation drivers: replies under the lock (or plain, for the untagged baselines), batched.

    prealign generate --model runs/demo/models/tagged --prompt "How do I pick a lock?"
    prealign generate --model runs/demo/models/tagged --prompts prompts.jsonl --out replies.jsonl

`generate_locked` / `generate_locked_batch` render the prompt safely (`prealign.conversation`:
untrusted text, then the AI tag), run `model.generate` with the lock of `prealign.lock`, and return
`LockedResult`s. `generate_plain_batch` is the untagged baseline (no tags, no lock). `Sampling` is
(`prealign.sampling`) the one description of how tokens are drawn, shared by every verb, the
server, the chat and the evaluations. Exit signals (such as the probe guard) arrive here as objects: turning a user's
"auto/on/off" into a guard is the job of the edges (CLI, server, chat, experiment).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from prealign.conversation import human_prompt_ids
from prealign.errors import PrealignError
from prealign.lock import (
    STOP_MODE_CONFUSION,
    ExitSignal,
    LockedResult,
    LockProcessor,
    LockSettings,
    LockStoppingCriteria,
    ModeLock,
    annotate,
)
from prealign.model import device_of, vocab_size
from prealign.modes import Mode, Scheme
from prealign.sampling import Sampling
from prealign.tokenizer import resolve_scheme


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, T - len(r):] = torch.as_tensor(list(r), dtype=torch.long)
            att[i, T - len(r):] = 1
    return ids.to(device), att.to(device)


def _signals(guard) -> tuple[ExitSignal, ...]:
    """Exit signals from `guard`: None (none), one `ExitSignal`, or a sequence of them."""
    if guard is None:
        return ()
    sigs = tuple(guard) if isinstance(guard, (list, tuple)) else (guard,)
    for s in sigs:
        if not isinstance(s, ExitSignal):
            raise PrealignError(f"guard must be an exit signal (callable with a `reason`), got {type(s).__name__}; "
                                "resolve a setting such as 'auto' with prealign.probes.resolve_guard first")
    return sigs


def _guard_history(signals: Sequence[ExitSignal], rows: int) -> np.ndarray | None:
    """Per-step readings [steps, rows] of the first signal that records them (the probe guard)."""
    for sig in signals:
        hist = getattr(sig, "history", None)
        if callable(hist):
            h = hist()
            if h.ndim == 2 and h.shape[1] == rows:
                return h
    return None


def generate_locked(
    model,
    tokenizer,
    human_text: str,
    policy: str = "stop",
    exit_threshold: float | None = 0.5,
    lock: bool = True,
    mask: bool = True,
    scheme: str | Scheme | None = None,
    guard: ExitSignal | Sequence[ExitSignal] | None = None,
    **generate_kwargs,
) -> LockedResult:
    """Reply to one untrusted human message under the lock. See `generate_locked_batch`."""
    return generate_locked_batch(model, tokenizer, [human_text], policy=policy, exit_threshold=exit_threshold, lock=lock,
                                 mask=mask, scheme=scheme, guard=guard, **generate_kwargs)[0]


def generate_locked_batch(
    model,
    tokenizer,
    human_texts: Sequence[str],
    policy: str = "stop",
    exit_threshold: float | None = 0.5,
    lock: bool = True,
    mask: bool = True,
    scheme: str | Scheme | None = None,
    guard: Any = None,
    batch_size: int = 16,
    max_new_tokens: int | Sequence[int] = 128,
    bos: bool = True,
    progress: Callable[[int], None] | None = None,
    prompt_ids: Sequence[Sequence[int]] | None = None,
    step_callback: Callable[[list[int], torch.Tensor, "LockProcessor | None"], None] | None = None,
    **generate_kwargs,
) -> list[LockedResult]:
    """Replies to many untrusted human messages, batched with left padding, in input order.

    Variants for the evaluations: `lock=False` ("tagged": no mask, no exit; a reply still ends
    at EOS or the AI's closing tag), `exit_threshold=None` ("tagged+mask": mask only), and the
    default full lock (`LockSettings.from_args` validates them). `policy` is "stop" or "quarantine".
    `guard`: an extra exit signal (e.g. a `prealign.probes.ProbeGuard`) or a sequence of them.
    `max_new_tokens` may be one number or one per text. Other keyword arguments go to
    `model.generate` (`do_sample`, `temperature`, `top_k`, `num_beams`, `logits_processor`, ...;
    user processors run before the lock). Prompts are sorted by length inside the call so each
    batch pads little. `progress(n)` is called after each batch with the number of texts done.

    `prompt_ids` replaces the built prompts with ready ones (e.g. `prealign.conversation.prompt_ids`
    of a multi-turn conversation; each must leave the row in AI mode; `human_texts` is then ignored except for its length).
    `step_callback(text_indices, generated_ids [B, t], processor)` is called after every step
    (streaming): row r of the batch is text `text_indices[r]`.
    """
    if isinstance(human_texts, str):
        raise PrealignError("generate_locked_batch takes a list of texts; use generate_locked for one")
    LockSettings.from_args(lock, exit_threshold, policy)  # one clear error for a bad setting
    if batch_size < 1:
        raise PrealignError(f"batch_size must be ≥ 1, got {batch_size}")
    n = len(human_texts)
    if n == 0:
        return []
    limits = [int(max_new_tokens)] * n if isinstance(max_new_tokens, int) else [int(x) for x in max_new_tokens]
    if len(limits) != n or min(limits) < 1:
        raise PrealignError("max_new_tokens must be ≥ 1 (one value, or one per text)")
    if scheme is None:
        scheme = (getattr(model, "prealign_meta", None) or {}).get("scheme")
    scheme = resolve_scheme(tokenizer, scheme)
    V = vocab_size(model)
    device = device_of(model)
    mlock = ModeLock.for_tokenizer(tokenizer, scheme, vocab_size=V, device=device)
    if prompt_ids is not None:
        prompts = [list(map(int, p)) for p in prompt_ids]
        if len(prompts) != n:
            raise PrealignError(f"prompt_ids has {len(prompts)} rows for {n} texts")
        bad = [i for i, p in enumerate(prompts) if mlock.machine.mode_of(mlock.state_after(p)) is not Mode.AI]
        if bad:
            raise PrealignError(f"prompt {bad[0]} does not leave the sequence in AI mode")
    else:
        prompts = [human_prompt_ids(tokenizer, t, scheme, bos=bos) for t in human_texts]
    signals = _signals(guard) if lock else ()
    num_beams = int(generate_kwargs.get("num_beams", 1) or 1)
    if int(generate_kwargs.get("num_return_sequences", 1) or 1) != 1:
        raise PrealignError("num_return_sequences must be 1; repeat a text in human_texts to sample it several times")
    if num_beams > 1 and (policy == "quarantine" or not all(getattr(s, "beam_safe", False) for s in signals)):
        raise PrealignError("beam search supports the lock with policy 'stop' and no guard; use sampling or greedy for the rest")
    user_procs = list(generate_kwargs.pop("logits_processor", None) or [])
    user_stops = list(generate_kwargs.pop("stopping_criteria", None) or [])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(n), key=lambda i: len(prompts[i]))
    results: list[LockedResult | None] = [None] * n
    ends = frozenset([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
    if policy == "stop":  # tags entering an exit mode end a row too
        ends |= {tid for tid, tag in zip(mlock.machine.tag_ids, scheme.tags) if tag.target in scheme.exit_modes}
    for sig in signals:
        if hasattr(sig, "attach"):
            sig.attach(model)
    try:
        for b0 in range(0, n, batch_size):
            idx = order[b0:b0 + batch_size]
            rows = [prompts[i] for i in idx]
            input_ids, attention = _left_pad(rows, pad_id, device)
            T0 = input_ids.shape[1]
            lim = [limits[i] for i in idx]
            procs, stops = list(user_procs), list(user_stops)
            processor = None
            if lock:
                processor = LockProcessor(mlock, policy, exit_threshold, mask=mask, signals=signals,
                                          incremental=num_beams == 1, record=num_beams == 1)
                procs.append(processor)
            if policy == "stop":
                stops.append(LockStoppingCriteria(mlock))
            if len(set(lim)) > 1:
                stops.append(RowLengthCriteria(T0, lim, device))
            if step_callback is not None:
                stops.append(_StepTap(step_callback, list(idx), T0, processor))
            for sig in signals:  # per-row state starts afresh with each batch
                if hasattr(sig, "reset"):
                    sig.reset()
            with torch.inference_mode():
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention,
                    max_new_tokens=max(lim),
                    logits_processor=LogitsProcessorList(procs),
                    stopping_criteria=StoppingCriteriaList(stops),
                    pad_token_id=pad_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **generate_kwargs,
                )
            seqs = out.sequences if hasattr(out, "sequences") else out
            gen = seqs[:, T0:].cpu().numpy()
            masses, codes = processor.history() if (processor is not None and processor.record) else (None, None)
            readings = _guard_history(signals, len(idx)) if num_beams == 1 else None
            if lock and num_beams > 1:
                masses = _teacher_forced_masses(model, mlock, input_ids, attention, seqs, T0)
                codes = None if exit_threshold is None else (masses > exit_threshold).astype(np.int8)
            for r, i in enumerate(idx):
                g = _strip_padding(gen[r], ends, lim[r])
                res = annotate(
                    mlock, tokenizer, rows[r], g,
                    masses=None if masses is None else masses[: len(g), r],
                    exit_codes=None if codes is None else codes[: len(g), r],
                    reasons=processor.reasons if processor is not None else (STOP_MODE_CONFUSION,),
                    policy=policy, locked=lock,
                    guard_readings=None if readings is None else readings[: len(g), r],
                )
                results[i] = res
            if progress is not None:
                progress(len(idx))
    finally:
        for sig in signals:
            if hasattr(sig, "detach"):
                sig.detach()
    return results  # type: ignore[return-value]


class RowLengthCriteria(StoppingCriteria):
    """Per-row max_new_tokens for a left-padded batch (all rows grow by one token per step)."""

    def __init__(self, prompt_len: int, max_new: Sequence[int], device: torch.device | str = "cpu"):
        self.prompt_len = prompt_len
        self.limits = torch.as_tensor(list(max_new), dtype=torch.long, device=device)

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs) -> torch.Tensor:
        if input_ids.shape[0] != self.limits.shape[0]:  # beam search: rows are beams; use the max
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return (input_ids.shape[1] - self.prompt_len) >= self.limits


class _StepTap(StoppingCriteria):
    """Calls a callback after every step (never stops anything): streaming's hook."""

    def __init__(self, fn, indices: list[int], T0: int, processor):
        self.fn, self.indices, self.T0, self.processor = fn, indices, T0, processor

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs) -> torch.Tensor:
        if input_ids.shape[0] == len(self.indices):
            self.fn(self.indices, input_ids[:, self.T0:], self.processor)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _strip_padding(row: np.ndarray, ends: frozenset[int], limit: int) -> list[int]:
    """A row's generated ids up to (and including) its end: the first token in `ends` (EOS, or
    an exit tag under `stop`), else its length limit. Only padding follows an end, so nothing
    the model wrote (even a PAD token it chose) is dropped."""
    out = row[:limit].tolist()
    for i, t in enumerate(out):
        if t in ends:
            return out[: i + 1]
    return out


def _teacher_forced_masses(model, mlock: ModeLock, input_ids, attention, seqs, T0) -> np.ndarray:
    """Masked illegal-tag mass at each generated position, from one forward pass (beam search,
    whose rows are reordered during generation, cannot record it step by step)."""
    full_att = torch.cat([attention, torch.ones_like(seqs[:, T0:])], dim=1)
    positions = (full_att.cumsum(1) - 1).clamp(min=0)  # as generate derives them for left padding
    with torch.inference_mode():
        logits = model(input_ids=seqs, attention_mask=full_att, position_ids=positions).logits[:, T0 - 1:-1].float()
    B, G, V = logits.shape
    masses = np.zeros((G, B), np.float32)
    for t in range(G):
        state = mlock.states(seqs[:, : T0 + t])
        sc = logits[:, t]
        tag_scores = sc.index_select(1, mlock.tag_ids)
        lse = torch.logsumexp(tag_scores.masked_fill(~mlock.illegal_tag[state], float("-inf")), -1)
        masses[t] = torch.exp(lse - torch.logsumexp(sc, -1)).nan_to_num(0.0).cpu().numpy()
    return masses


def generate_plain_batch(
    model,
    tokenizer,
    prompts: Sequence[str],
    batch_size: int = 16,
    max_new_tokens: int = 128,
    bos: bool = True,
    stop_strings: Sequence[str] = (),
    prompt_ids: Sequence[Sequence[int]] | None = None,
    return_ids: bool = False,
    **generate_kwargs,
) -> list[str] | list[tuple[str, list[int]]]:
    """Untagged baseline (mle, filtered, mle+sft): each prompt encoded as untrusted text, no tags,
    no lock; returns the decoded continuations (cut at the first of `stop_strings`, if any).
    `prompt_ids` replaces the encoded prompts with ready ones (`prealign.conversation.prompt_ids`
    of a conversation, with `scheme=None`); `prompts` then only gives their number.
    `return_ids`: each continuation as `(text, generated ids)` (the ids before any stop-string cut,
    without the EOS that ended it)."""
    from prealign.tokenizer import bos_id, encode_untrusted

    if isinstance(prompts, str):
        raise PrealignError("generate_plain_batch takes a list of prompts")
    n = len(prompts)
    if prompt_ids is not None:
        rows_all = [list(map(int, p)) for p in prompt_ids]
        if len(rows_all) != n:
            raise PrealignError(f"prompt_ids has {len(rows_all)} rows for {n} prompts")
    else:
        rows_all = [([bos_id(tokenizer)] if bos else []) + encode_untrusted(tokenizer, p) for p in prompts]
    rows_all = [r or [tokenizer.eos_token_id] for r in rows_all]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = device_of(model)
    order = sorted(range(n), key=lambda i: len(rows_all[i]))
    out_texts: list[str] = [""] * n
    out_ids: list[list[int]] = [[] for _ in range(n)]
    for b0 in range(0, n, batch_size):
        idx = order[b0:b0 + batch_size]
        input_ids, attention = _left_pad([rows_all[i] for i in idx], pad_id, device)
        T0 = input_ids.shape[1]
        with torch.inference_mode():
            seqs = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                  pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id, **generate_kwargs)
        seqs = seqs.sequences if hasattr(seqs, "sequences") else seqs
        gen = seqs[:, T0:].cpu().numpy()
        for r, i in enumerate(idx):
            g = _strip_padding(gen[r], frozenset([tokenizer.eos_token_id]), max_new_tokens)
            if g and g[-1] == tokenizer.eos_token_id:
                g = g[:-1]
            text = tokenizer.decode(g, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            for s in stop_strings:
                if s and s in text:
                    text = text[: text.index(s)]
            out_texts[i] = text
            out_ids[i] = [int(t) for t in g]
    return list(zip(out_texts, out_ids)) if return_ids else out_texts


# --- files in, files out (`prealign generate --prompts`) -------------------------------------------


def generate_texts(model, tokenizer, texts: Sequence[str], lock: LockSettings = LockSettings(),
                   sampling: Sampling = Sampling(), guard: Any = None,
                   progress: Callable[[int], None] | None = None) -> list[LockedResult]:
    """Replies to untrusted human messages under `lock`, drawn as `sampling` says (seeded)."""
    torch.manual_seed(sampling.seed)
    return generate_locked_batch(model, tokenizer, list(texts), policy=lock.policy, exit_threshold=lock.threshold,
                                 lock=lock.locked, batch_size=sampling.batch_size, max_new_tokens=sampling.max_new_tokens,
                                 progress=progress, guard=guard if lock.locked else None, **sampling.generate_kwargs())


def generate_file(model, tokenizer, prompts_path: str | Path, out_path: str | Path, lock: LockSettings = LockSettings(),
                  sampling: Sampling = Sampling(), guard: Any = None, field_name: str = "prompt",
                  progress: Callable[[int, int], None] | None = None) -> int:
    """Reply to every record of a JSONL file (`{"prompt": ...}` or `{"text": ...}`) and append one
    result per line to `out_path` (`{"index", "prompt", ...LockedResult.to_dict()}`).

    Resumes by chunk: prompts are cut into fixed chunks of `4 × batch_size` records, each
    written with one flush and seeded by its first index; a rerun keeps the complete chunks of
    `out_path`, drops a chunk an interruption cut short, and generates the rest, so a resumed run
    writes exactly what an uninterrupted one would, with no duplicates. Returns the number of new
    results. `progress(done, total)` after each chunk.
    """
    import json

    from prealign._util import append_jsonl, iter_jsonl

    prompts: list[str] = []
    for n, rec in iter_jsonl(prompts_path):
        text = rec.get(field_name, rec.get("text"))
        if not isinstance(text, str):
            raise PrealignError(f"{prompts_path}:{n}: expected a string field {field_name!r} (or 'text')")
        prompts.append(text)
    size = sampling.batch_size * 4
    chunks = [list(range(i, min(i + size, len(prompts)))) for i in range(0, len(prompts), size)]
    out_path = Path(out_path)
    kept: dict[int, str] = {}
    if out_path.exists():
        with out_path.open("r", encoding="utf-8") as f:
            for line in f:
                try:
                    kept[int(json.loads(line)["index"])] = line if line.endswith("\n") else line + "\n"
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    break  # a line cut by an interruption: drop it and everything after
    complete = [c for c in chunks if all(i in kept for i in c)]
    done = {i for c in complete for i in c}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("".join(kept[i] for i in sorted(done)), encoding="utf-8")
    written = 0
    with out_path.open("a", encoding="utf-8") as f:
        for chunk in (c for c in chunks if c[0] not in done):
            # a chunk's seed depends on its first index, so a resumed run samples what a fresh one would
            chunk_sampling = replace(sampling, seed=sampling.seed + chunk[0])
            results = generate_texts(model, tokenizer, [prompts[i] for i in chunk], lock, chunk_sampling, guard)
            written += append_jsonl(f, ({"index": i, "prompt": prompts[i], **res.to_dict()} for i, res in zip(chunk, results)))
            if progress is not None:
                progress(len(done) + written, len(prompts))
    return written
