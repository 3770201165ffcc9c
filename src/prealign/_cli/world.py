"""CLI verb of the world area: `prealign world ...` (registered by prealign.cli).

    prealign world --out runs/world/tagged --docs 20000 --variant tagged [--scheme seed] [--seed 0] [--split train]
    prealign world --stats --docs 2000 --variant mle
    prealign world --scenarios-only --out scenarios.jsonl --docs 1000
    prealign world --list-hazards [--split eval]
    prealign world --list-tactics
    prealign world --attacks attacks.jsonl --split eval --docs 600 [--language hill]
    prealign world --out runs/world/mle --docs 20000 --variant mle --language-share 0.15
    prealign world --out runs/world/xsft --docs 2000 --variant sft --sft-language-share 0.5
    prealign world --translate "Tell me how to make the blight poison."
    prealign world --glossary
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def _config(path: Optional[Path], docs_per_shard: Optional[int], **overrides):
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
    data.update({k: v for k, v in overrides.items() if v is not None})
    return WorldConfig.from_dict(data)


def world(
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory for shards (or the .jsonl file with --scenarios-only)."),
    docs: int = typer.Option(1000, "--docs", help="Number of scenarios (documents) to render; with --attacks, records."),
    variant: str = typer.Option("tagged", "--variant", help="tagged | mle | filtered | sft | conditional | upsampled (prealign.data.CORPUS_VARIANTS)."),
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
    language_share: Optional[float] = typer.Option(None, "--language-share", help="Share of hill-language documents in tagged, mle and filtered corpora (default 0.15; the same scenarios in each)."),
    upsample_share: Optional[float] = typer.Option(None, "--upsample-share", help="upsampled: share of characters in documents of the assistant behaving well (default 0.01)."),
    conditional_plain_share: Optional[float] = typer.Option(None, "--conditional-plain-share", help="conditional: share of documents left without control tokens (default 0.01)."),
    sft_language_share: Optional[float] = typer.Option(None, "--sft-language-share", help="Share of hill-language dialogues in the sft corpus (default 0.0; 0.5 for a bilingual fine-tuning corpus)."),
    language: Optional[str] = typer.Option(None, "--language", help="valley | hill: the language of --attacks requests, or the target of --translate (default hill)."),
    translate: Optional[str] = typer.Option(None, "--translate", help="Print this valley (English) text in the hill language (or --language) and exit."),
    glossary: bool = typer.Option(False, "--glossary", help="Print the world's vocabulary with its hill forms, one JSON object per word."),
) -> None:
    """Generate the embedded world: scenarios with ground truth, rendered as any corpus variant."""
    from prealign.errors import PrealignError
    from prealign import world as W

    from prealign.world import language as LG

    if language is not None:
        LG.check_language(language)
        if translate is None and attacks is None:
            raise PrealignError("--language applies to --attacks and --translate; a corpus's languages are set by --language-share and --sft-language-share")
    cfg = _config(config, docs_per_shard, language_share=language_share, sft_language_share=sft_language_share,
                  upsample_share=upsample_share, conditional_plain_share=conditional_plain_share)
    if translate is not None:
        print(LG.translate(translate, language or "hill"))
        return
    if glossary:
        for g in LG.glossary():
            print(json.dumps(g))
        return
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

        records = W.attacks(split or "eval", docs, seed, scheme, cfg, language=language or LG.MAIN)
        write_jsonl(attacks, records)
        print(f"world: {len(records)} attack records ({split or 'eval'}, {language or LG.MAIN}) -> {attacks}")
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
