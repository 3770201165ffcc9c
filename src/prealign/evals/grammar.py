"""Did a tagged model learn its grammar? Free samples from BOS until EOS, linted.

    prealign eval grammar --model runs/demo/models/tagged --samples 300

The model writes documents of its own (no lock, no mask, no prompt: `model.generate` from the
opening EOS, true temperature sampling with `top_k=0`), and `prealign.segments.lint_text` checks
each *complete* sample (one that ended with EOS within `max_new_tokens`). A model that has not
learnt its grammar drifts out of its mode, so an experiment's comparison means little until this
rate is high (the goal: ≥ 99%). Samples longer than the training context are counted apart:
positions the model was never trained on; so are the world's two languages (each sample's
language guessed by `prealign.world.language.guess_language`).
"""

from __future__ import annotations

from typing import Any

from prealign.errors import PrealignError


def free_sample_lint(model, tokenizer, samples: int = 300, max_new_tokens: int = 1024, temperature: float = 1.0,
                     batch_size: int = 50, seed: int = 0, keep_failures: int = 20) -> dict[str, Any]:
    """Lint-clean rate of complete free samples, with its Wilson interval and the split by length."""
    import torch

    from prealign.evals.metrics import wilson
    from prealign.model import context_length, device_of
    from prealign.segments import lint_text
    from prealign.tokenizer import bos_id, decode, resolve_scheme
    from prealign.world.language import LANGUAGES, guess_language

    if samples < 1 or max_new_tokens < 1 or batch_size < 1:
        raise PrealignError("samples, max_new_tokens and batch_size must be ≥ 1")
    meta = getattr(model, "prealign_meta", None) or {}
    scheme = resolve_scheme(tokenizer, meta.get("scheme"))
    eos, start = tokenizer.eos_token_id, bos_id(tokenizer)
    ctx = int((meta.get("config") or {}).get("seq_len") or context_length(model))
    torch.manual_seed(seed)
    rows: list[tuple[bool, int, list[str], str]] = []  # (complete, length, lint errors, language)
    failures: list[dict[str, Any]] = []
    with torch.inference_mode():
        for b0 in range(0, samples, batch_size):
            n = min(batch_size, samples - b0)
            ids = torch.full((n, 1), start, dtype=torch.long, device=device_of(model))
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0, top_p=1.0,
                                 temperature=temperature, max_new_tokens=max_new_tokens, eos_token_id=eos,
                                 pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
            for row in gen[:, 1:].tolist():
                done = eos in row
                body = row[: row.index(eos)] if done else row
                text = decode(tokenizer, body)
                errors = [f"{p.code}: {p.message}" for p in lint_text(text, scheme) if p.severity == "error"] if done else []
                language = guess_language(text)
                rows.append((done, len(body), errors, language))
                if errors and len(failures) < keep_failures:
                    failures.append({"text": text, "language": language, "problems": errors})
    complete = [r for r in rows if r[0]]
    clean = [r for r in complete if not r[2]]
    within = [r for r in complete if r[1] < ctx]
    codes: dict[str, int] = {}
    for r in complete:
        for e in r[2]:
            code = e.split(":", 1)[0]
            codes[code] = codes.get(code, 0) + 1
    return {
        "lint_clean": wilson(len(clean), len(complete)).to_dict(),
        "samples": len(rows), "complete": len(complete),
        "within_context": wilson(sum(1 for r in within if not r[2]), len(within)).to_dict(),
        "beyond_context": wilson(sum(1 for r in complete if r[1] >= ctx and not r[2]), sum(1 for r in complete if r[1] >= ctx)).to_dict(),
        "by_language": {lg: wilson(sum(1 for r in complete if r[3] == lg and not r[2]),
                                   sum(1 for r in complete if r[3] == lg)).to_dict() for lg in LANGUAGES},
        "context": ctx, "mean_tokens": round(sum(r[1] for r in rows) / max(len(rows), 1), 1),
        "problems_by_code": codes, "failures": failures,
        "settings": {"samples": samples, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": 0, "seed": seed},
    }
