"""CLI verbs for the synth area: `prealign synth render|review|transform|import` and `prealign cost`.

    prealign synth render --scenarios s.jsonl --endpoint http://127.0.0.1:8000/v1 --model NAME --out runs/synth
    prealign cost --json

Each verb builds a config and calls one library function (prealign.synth).
"""

from __future__ import annotations

import json
from typing import List, Optional

import typer


def _client(endpoint: Optional[str], model: Optional[str], concurrency: int, timeout: float, retries: int,
            api_key_env: str, temperature: float, max_tokens: int, cache_dir: Optional[str]):
    from prealign.errors import PrealignError
    from prealign.synth.client import ClientConfig

    if endpoint is None and model is None:
        return None
    if not endpoint or not model:
        raise PrealignError("pass both --endpoint and --model (the model name the server serves)")
    return ClientConfig(endpoint=endpoint, model=model, concurrency=concurrency, timeout_s=timeout, max_retries=retries,
                        api_key_env=api_key_env, temperature=temperature, max_tokens=max_tokens, cache_dir=cache_dir)


def _run(kind: str, inputs: List[str], out: str, endpoint, model, plan, scheme, shard_size, concurrency, timeout,
         retries, api_key_env, temperature, max_tokens, cache_dir, prompt_dir, engine, ray_address, workers, quiet,
         field="text", chunk_chars=2000, min_fidelity=0.9) -> None:
    from prealign.synth.plan import load_plan
    from prealign.synth.rank import SynthConfig
    from prealign.synth.run import run_synth

    cfg = SynthConfig(
        kind=kind, inputs=tuple(inputs), out=out,
        client=_client(endpoint, model, concurrency, timeout, retries, api_key_env, temperature, max_tokens, cache_dir),
        plan=load_plan(plan) if plan else None, scheme=scheme, shard_size=shard_size, prompt_dir=prompt_dir,
        field=field, chunk_chars=chunk_chars, min_fidelity=min_fidelity, engine=engine, ray_address=ray_address,
        workers=workers, progress=not quiet,
    )
    s = run_synth(cfg)
    t = s["ledger"]["total"]
    typer.echo(f"{kind}: {s['items']} items -> kept {s['kept']}, rejected {s['rejected']}, escalated {s['escalated']} in {out}")
    typer.echo(f"ledger: {t['requests']} requests ({t['cached']} cached), paid {t['paid_prompt_tokens']} read + "
               f"{t['paid_completion_tokens']} written tokens; cost: prealign cost --ledger {out}")
    if s["reject_reasons"]:
        typer.echo("rejected for: " + ", ".join(f"{k} x{v}" for k, v in s["reject_reasons"].items()))


# Shared options (typer has no option groups; these keep the four verbs consistent).
_OUT = typer.Option(..., "--out", help="Run directory: shards, ledger, cache, escalate queue.")
_ENDPOINT = typer.Option(None, "--endpoint", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.")
_MODEL = typer.Option(None, "--model", help="Model name the server serves.")
_PLAN = typer.Option(None, "--plan", help="Review plan: a packaged name (default, grade-filter, lint-only) or a YAML/TOML file.")
_SCHEME = typer.Option("seed", "--scheme", help="Tag scheme (seed, seed+unaligned, ai-default).")
_SHARD = typer.Option(64, "--shard-size", help="Items per rank (one Parquet shard each).")
_CONC = typer.Option(16, "--concurrency", help="Requests in flight at most.")
_TIMEOUT = typer.Option(120.0, "--timeout", help="Seconds per request before it is retried.")
_RETRIES = typer.Option(8, "--max-retries", help="Retries per request (429, 5xx, timeouts, cut connections).")
_KEYENV = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the API key (never logged).")
_TEMP = typer.Option(0.7, "--temperature")
_MAXTOK = typer.Option(2048, "--max-tokens")
_CACHE = typer.Option(None, "--cache-dir", help="Response cache (default OUT/cache); share it between runs to never pay twice.")
_PROMPTS = typer.Option(None, "--prompt-dir", help="Directory of NAME.txt templates overriding the packaged prompts.")
_ENGINE = typer.Option("local", "--engine", help="local (one process, asyncio) or ray (Ray Data map_batches over ranks).")
_RAYADDR = typer.Option(None, "--ray-address", help="Ray cluster address (e.g. auto); default: start a local Ray.")
_WORKERS = typer.Option(2, "--workers", help="Ray: ranks processed at once.")
_QUIET = typer.Option(False, "--quiet", help="No progress bar.")


def register(app: typer.Typer) -> None:
    synth = typer.Typer(help="LLM-written corpora: render scenarios, review, transform human text, import gold documents.",
                        no_args_is_help=True)

    @synth.command("render")
    def render(scenarios: List[str] = typer.Option(..., "--scenarios", help="Scenario JSONL (prealign world --scenarios-only)."),
               out: str = _OUT, endpoint: Optional[str] = _ENDPOINT, model: Optional[str] = _MODEL,
               plan: Optional[str] = _PLAN, scheme: str = _SCHEME, shard_size: int = _SHARD, concurrency: int = _CONC,
               timeout: float = _TIMEOUT, max_retries: int = _RETRIES, api_key_env: str = _KEYENV,
               temperature: float = _TEMP, max_tokens: int = _MAXTOK, cache_dir: Optional[str] = _CACHE,
               prompt_dir: Optional[str] = _PROMPTS, engine: str = _ENGINE, ray_address: Optional[str] = _RAYADDR,
               workers: int = _WORKERS, quiet: bool = _QUIET) -> None:
        """Render world scenarios into tagged documents with an LLM, then review them."""
        _run("render", scenarios, out, endpoint, model, plan, scheme, shard_size, concurrency, timeout, max_retries,
             api_key_env, temperature, max_tokens, cache_dir, prompt_dir, engine, ray_address, workers, quiet)

    @synth.command("review")
    def review(inputs: List[str] = typer.Option(..., "--in", help="Documents: Parquet shards/dirs or JSONL with a text field."),
               out: str = _OUT, endpoint: Optional[str] = _ENDPOINT, model: Optional[str] = _MODEL,
               plan: Optional[str] = _PLAN, scheme: str = _SCHEME, shard_size: int = _SHARD, concurrency: int = _CONC,
               timeout: float = _TIMEOUT, max_retries: int = _RETRIES, api_key_env: str = _KEYENV,
               temperature: float = _TEMP, max_tokens: int = _MAXTOK, cache_dir: Optional[str] = _CACHE,
               prompt_dir: Optional[str] = _PROMPTS, engine: str = _ENGINE, ray_address: Optional[str] = _RAYADDR,
               workers: int = _WORKERS, quiet: bool = _QUIET,
               field: str = typer.Option("text", "--field", help="Text column or JSON field.")) -> None:
        """Run review passes (lint, grade, filter, edit, crosscheck, canary) over existing documents."""
        _run("review", inputs, out, endpoint, model, plan, scheme, shard_size, concurrency, timeout, max_retries,
             api_key_env, temperature, max_tokens, cache_dir, prompt_dir, engine, ray_address, workers, quiet, field=field)

    @synth.command("transform")
    def transform(inputs: List[str] = typer.Option(..., "--in", help="Human text: .txt/.md files, JSONL or Parquet."),
                  out: str = _OUT, endpoint: Optional[str] = _ENDPOINT, model: Optional[str] = _MODEL,
                  plan: Optional[str] = _PLAN, scheme: str = _SCHEME, shard_size: int = _SHARD,
                  concurrency: int = _CONC, timeout: float = _TIMEOUT, max_retries: int = _RETRIES,
                  api_key_env: str = _KEYENV, temperature: float = _TEMP, max_tokens: int = _MAXTOK,
                  cache_dir: Optional[str] = _CACHE, prompt_dir: Optional[str] = _PROMPTS, engine: str = _ENGINE,
                  ray_address: Optional[str] = _RAYADDR, workers: int = _WORKERS, quiet: bool = _QUIET,
                  field: str = typer.Option("text", "--field"),
                  chunk_chars: int = typer.Option(2000, "--chunk-chars", help="Chunk size in characters."),
                  min_fidelity: float = typer.Option(0.9, "--min-fidelity", help="Share of source words that must stay human text.")) -> None:
        """Keep human text in human mode and add aligned-AI commentary (the text is untrusted)."""
        _run("transform", inputs, out, endpoint, model, plan, scheme, shard_size, concurrency, timeout, max_retries,
             api_key_env, temperature, max_tokens, cache_dir, prompt_dir, engine, ray_address, workers, quiet,
             field=field, chunk_chars=chunk_chars, min_fidelity=min_fidelity)

    @synth.command("import")
    def import_(inputs: List[str] = typer.Option(..., "--in", help="Gold documents written by people (.txt, JSONL, Parquet)."),
                out: str = _OUT, plan: Optional[str] = _PLAN, scheme: str = _SCHEME, shard_size: int = _SHARD,
                field: str = typer.Option("text", "--field"), quiet: bool = _QUIET) -> None:
        """Import human-written gold documents: linted, provenance `human`, no LLM."""
        _run("import", inputs, out, None, None, plan, scheme, shard_size, 1, 60.0, 0, "OPENAI_API_KEY", 0.0, 1,
             None, None, "local", None, 1, quiet, field=field)

    app.add_typer(synth, name="synth")

    @app.command("cost")
    def cost(tokens: float = typer.Option(1e15, "--tokens", help="Kept corpus size in tokens."),
             passes: float = typer.Option(10.0, "--passes", help="Passes through the text (assumption mode)."),
             generate_fraction: float = typer.Option(0.25, "--generate-fraction", help="Share of processed tokens generated."),
             generate_price: float = typer.Option(7.5, "--generate-price", help="USD per million generated tokens."),
             read_price: float = typer.Option(2.5, "--read-price", help="USD per million read (prompt) tokens."),
             ledger: Optional[str] = typer.Option(None, "--ledger", help="A synth run directory: extrapolate its measured tokens."),
             as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON (with total_usd).")) -> None:
        """What an LLM-written, LLM-reviewed corpus costs: the seed's arithmetic, or extrapolated from a run."""
        from prealign.synth.cost import CostConfig, format_report, ledger_cost, seed_cost

        cfg = CostConfig(tokens=tokens, passes=passes, generate_fraction=generate_fraction,
                         generate_usd_per_m=generate_price, read_usd_per_m=read_price)
        report = ledger_cost(ledger, cfg) if ledger else seed_cost(cfg)
        typer.echo(json.dumps(report, indent=2) if as_json else format_report(report))
