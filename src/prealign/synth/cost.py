"""The cost model: what an LLM-written, LLM-reviewed corpus costs, from the seed's assumptions or a run.

    prealign cost                          # the seed's estimate: about $37.5 billion ("O($40 billion)")
    prealign cost --tokens 1e12 --passes 6 --generate-price 2 --read-price 0.5 --json
    prealign cost --ledger runs/synth --tokens 1e15    # extrapolate a real run's measured tokens

The seed's arithmetic: a corpus of T kept tokens goes through P passes; a fraction g of all the
text processed is generated (written by the model) and 1 - g is read (prompt tokens), so

    generated = T * P * g,  read = T * P * (1 - g),
    cost = generated * price_generate + read * price_read.

With T = 10^15, P = 10, g = 0.25, $7.50 and $2.50 per million tokens: 2.5e15 generated tokens
($18.75 billion) and 7.5e15 read ($18.75 billion), $37.5 billion in all, the seed's O($40 billion).
(g * P = 2.5: the seed's "we generate 2.5 times as much text as we actually use".)

From a ledger: the run's requests give tokens read and written per kept token (each distinct
request counted once, however often a resumed run re-asked it; only finished ranks; documents
that review threw away are paid for by the kept ones), which scale to any target size and prices.
The result also states the run's equivalent `passes` and generate fraction, to compare with the
seed's 10 and 25%.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from prealign.errors import PrealignError

MILLION = 1_000_000


@dataclass(frozen=True)
class CostConfig:
    """The seed's numbers are the defaults. Prices are USD per million tokens."""

    tokens: float = 1e15
    passes: float = 10.0
    generate_fraction: float = 0.25
    generate_usd_per_m: float = 7.5
    read_usd_per_m: float = 2.5

    def __post_init__(self) -> None:
        if self.tokens <= 0 or self.passes <= 0:
            raise PrealignError(f"tokens and passes must be > 0 (got tokens={self.tokens:g}, passes={self.passes:g})")
        if not 0.0 <= self.generate_fraction <= 1.0:
            raise PrealignError(f"generate fraction must be within [0, 1], got {self.generate_fraction:g}")
        if self.generate_usd_per_m < 0 or self.read_usd_per_m < 0:
            raise PrealignError("prices must be >= 0 USD per million tokens")


def seed_cost(cfg: CostConfig = CostConfig()) -> dict:
    """The seed's estimate for any numbers (see the module docstring)."""
    processed = cfg.tokens * cfg.passes
    generated = processed * cfg.generate_fraction
    read = processed - generated
    generate_usd = generated * cfg.generate_usd_per_m / MILLION
    read_usd = read * cfg.read_usd_per_m / MILLION
    return {
        "source": "assumptions",
        "tokens": cfg.tokens,
        "passes": cfg.passes,
        "generate_fraction": cfg.generate_fraction,
        "generate_usd_per_m": cfg.generate_usd_per_m,
        "read_usd_per_m": cfg.read_usd_per_m,
        "processed_tokens": processed,
        "generated_tokens": generated,
        "read_tokens": read,
        "generated_per_kept_token": cfg.passes * cfg.generate_fraction,
        "generate_usd": generate_usd,
        "read_usd": read_usd,
        "total_usd": generate_usd + read_usd,
        "usd_per_million_kept_tokens": (generate_usd + read_usd) / cfg.tokens * MILLION,
    }


def _finished_ranks(run: Path) -> dict[int, dict]:
    from prealign.data import part_path

    done: dict[int, dict] = {}
    comp = run / "completions"
    for m in sorted(comp.glob("*")) if comp.exists() else []:
        if m.name.isdigit() and part_path(run, int(m.name)).exists():
            try:
                done[int(m.name)] = json.loads(m.read_text(encoding="utf-8") or "{}")
            except json.JSONDecodeError:
                raise PrealignError(f"{m}: unreadable completion marker") from None
    return done


def ledger_cost(run_dir: str, cfg: CostConfig = CostConfig()) -> dict:
    """Extrapolate a synth run's measured tokens per kept token to `cfg.tokens` at `cfg`'s prices.

    `cfg.passes` and `cfg.generate_fraction` are not used: the run measures them.
    """
    from prealign.synth.ledger import ledger_totals, read_ledger

    run = Path(run_dir)
    if not run.is_dir():
        raise PrealignError(f"{run}: not a synth run directory (expected the --out of `prealign synth render`)")
    ranks = _finished_ranks(run)
    if not ranks:
        raise PrealignError(f"{run}: no finished ranks (no completions/ markers): nothing to extrapolate from")
    entries = [e for e in read_ledger(run) if int(e.get("rank", 0)) in ranks]
    kept_docs = sum(int(m.get("kept", m.get("records", 0))) for m in ranks.values())
    kept_tokens = sum(int(m.get("kept_tokens", 0)) for m in ranks.values())
    dropped = sum(int(m.get("rejected", 0)) + int(m.get("escalated", 0)) for m in ranks.values())
    if kept_docs == 0 or kept_tokens == 0:
        raise PrealignError(f"{run}: the run kept no documents ({dropped} thrown away), so there is no cost per kept token")
    summary = ledger_totals(entries)
    read, written = summary["total"]["prompt_tokens"], summary["total"]["completion_tokens"]
    read_per, gen_per = read / kept_tokens, written / kept_tokens
    target_read, target_gen = cfg.tokens * read_per, cfg.tokens * gen_per
    generate_usd = target_gen * cfg.generate_usd_per_m / MILLION
    read_usd = target_read * cfg.read_usd_per_m / MILLION
    per_pass = {
        name: {"read_per_kept_token": p["prompt_tokens"] / kept_tokens,
               "generated_per_kept_token": p["completion_tokens"] / kept_tokens,
               "requests": p["unique_requests"],
               "usd": cfg.tokens * (p["prompt_tokens"] * cfg.read_usd_per_m + p["completion_tokens"] * cfg.generate_usd_per_m)
               / kept_tokens / MILLION}
        for name, p in sorted(summary["passes"].items())
    }
    return {
        "source": str(run),
        "tokens": cfg.tokens,
        "generate_usd_per_m": cfg.generate_usd_per_m,
        "read_usd_per_m": cfg.read_usd_per_m,
        "measured": {
            "kept_documents": kept_docs, "dropped_documents": dropped, "kept_tokens": kept_tokens,
            "kept_fraction": kept_docs / (kept_docs + dropped),
            "read_tokens": read, "generated_tokens": written, "requests": summary["total"]["unique_requests"],
            "paid_read_tokens": summary["total"]["paid_prompt_tokens"],
            "paid_generated_tokens": summary["total"]["paid_completion_tokens"],
            "tokens_per_kept_document": kept_tokens / kept_docs,
        },
        "passes": (read + written) / kept_tokens,
        "generate_fraction": written / (read + written) if read + written else 0.0,
        "read_per_kept_token": read_per,
        "generated_per_kept_token": gen_per,
        "documents_needed": cfg.tokens / (kept_tokens / kept_docs),
        "read_tokens": target_read,
        "generated_tokens": target_gen,
        "generate_usd": generate_usd,
        "read_usd": read_usd,
        "total_usd": generate_usd + read_usd,
        "usd_per_million_kept_tokens": (generate_usd + read_usd) / cfg.tokens * MILLION,
        "per_pass": per_pass,
    }


def format_usd(x: float) -> str:
    for unit, scale in (("trillion", 1e12), ("billion", 1e9), ("million", 1e6), ("thousand", 1e3)):
        if abs(x) >= scale:
            return f"${x / scale:,.2f} {unit}"
    return f"${x:,.2f}"


def format_report(r: dict) -> str:
    """The human-readable form the CLI prints."""
    lines = []
    if r["source"] == "assumptions":
        lines.append(f"corpus {r['tokens']:.3g} tokens x {r['passes']:g} passes, {r['generate_fraction']:.0%} generated")
    else:
        m = r["measured"]
        lines.append(f"measured in {r['source']}: {m['kept_documents']} kept / {m['dropped_documents']} dropped documents, "
                     f"{m['kept_tokens']} kept tokens, {m['read_tokens']} read + {m['generated_tokens']} generated")
        lines.append(f"  = {r['passes']:.2f} passes per kept token, {r['generate_fraction']:.1%} generated "
                     f"(the seed assumes 10 and 25%)")
        for name, p in r["per_pass"].items():
            lines.append(f"  {name:<11} read {p['read_per_kept_token']:8.2f}  written {p['generated_per_kept_token']:6.2f}"
                         f"  per kept token  ({format_usd(p['usd'])})")
        lines.append(f"extrapolated to {r['tokens']:.3g} kept tokens ({r['documents_needed']:.3g} documents)")
    lines.append(f"generated {r['generated_tokens']:.3g} tokens at ${r['generate_usd_per_m']:g}/M = {format_usd(r['generate_usd'])}")
    lines.append(f"read      {r['read_tokens']:.3g} tokens at ${r['read_usd_per_m']:g}/M = {format_usd(r['read_usd'])}")
    lines.append(f"total {format_usd(r['total_usd'])} (${r['usd_per_million_kept_tokens']:.2f} per million kept tokens)")
    return "\n".join(lines)
