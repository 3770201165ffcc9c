"""CLI verb of the world area: `prealign world ...` (registered by prealign.cli).

    prealign world --out runs/world/tagged --docs 20000 --variant tagged [--scheme seed] [--seed 0] [--split train]
    prealign world --stats --docs 2000 --variant mle
    prealign world --scenarios-only --out scenarios.jsonl --docs 1000
    prealign world --list-hazards [--split eval]
    prealign world --list-tactics
    prealign world --attacks attacks.jsonl --split eval --docs 600
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def _config(path: Optional[Path], docs_per_shard: Optional[int]):
    from prealign.errors import PrealignError
    from prealign.world import WorldConfig

    data: dict = {}
    if path is not None:
        if not path.exists():
            raise PrealignError(f"{path}: world config file not found")
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise PrealignError(f"{path}: not valid JSON ({e.msg})") from None
        if not isinstance(data, dict):
            raise PrealignError(f"{path}: a world config must be a mapping of WorldConfig fields")
    if docs_per_shard is not None:
        data["docs_per_shard"] = docs_per_shard
    return WorldConfig.from_dict(data)


def world(
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory for shards (or the .jsonl file with --scenarios-only)."),
    docs: int = typer.Option(1000, "--docs", help="Number of scenarios (documents) to render; with --attacks, records."),
    variant: str = typer.Option("tagged", "--variant", help="tagged | mle | filtered | sft"),
    scheme: str = typer.Option("seed", "--scheme", help="Tag scheme for the tagged variant (seed, seed+unaligned, ai-default)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed renders the same corpus."),
    split: Optional[str] = typer.Option(None, "--split", help="train | calib | eval (default train; --list-hazards: all)."),
    stats: bool = typer.Option(False, "--stats", help="Print variety and label statistics as JSON; write nothing."),
    scenarios_only: bool = typer.Option(False, "--scenarios-only", help="Write the structured scenarios alone to --out FILE.jsonl."),
    list_hazards: bool = typer.Option(False, "--list-hazards", help="Print one JSON object per hazard (id, canary, reserve, ...)."),
    list_tactics: bool = typer.Option(False, "--list-tactics", help="Print one JSON object per tactic family (id, heldout, ...)."),
    attacks: Optional[Path] = typer.Option(None, "--attacks", help="Write red-team/behaviour attack records of --split (default eval) to this .jsonl."),
    config: Optional[Path] = typer.Option(None, "--config", help="JSON/YAML file of WorldConfig fields (unknown keys are errors)."),
    docs_per_shard: Optional[int] = typer.Option(None, "--docs-per-shard", help="Documents per Parquet shard (resume granularity)."),
    workers: int = typer.Option(1, "--workers", help="Processes rendering shards in parallel (same shards as 1)."),
) -> None:
    """Generate the embedded world: scenarios with ground truth, rendered as any corpus variant."""
    from prealign.errors import PrealignError
    from prealign import world as W

    cfg = _config(config, docs_per_shard)
    if list_hazards:
        for h in W.hazards(split, cfg):
            print(json.dumps(h))
        return
    if list_tactics:
        for t in W.tactics(cfg):
            print(json.dumps(t))
        return
    if attacks is not None:
        from prealign._util import write_jsonl

        records = W.attacks(split or "eval", docs, seed, scheme, cfg)
        write_jsonl(attacks, records)
        print(f"world: {len(records)} attack records ({split or 'eval'}) -> {attacks}")
        return
    split = split or "train"
    if stats:
        print(json.dumps(W.stats(docs, variant, scheme, seed, split, cfg), indent=2))
        return
    if out is None:
        raise PrealignError("--out is required (a directory for shards, or a .jsonl file with --scenarios-only)")
    if scenarios_only:
        pool = "sft" if variant == "sft" else "pretrain"
        n = W.write_scenarios(out, docs, split, seed, cfg, pool)
        print(f"world: {n} scenarios ({split}) -> {out}")
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("world {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=False) as bar:
        task = bar.add_task(f"{variant} {split}", total=docs)
        paths = W.generate(out, docs, variant, scheme, seed, split, cfg, progress=lambda n: bar.advance(task, n), workers=workers)
    print(f"world: {len(paths)} shard(s) -> {out}")


def register(app: typer.Typer) -> None:
    app.command("world")(world)
