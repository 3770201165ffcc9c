"""CLI verbs of the foundation: `prealign tokenizer train`, `prealign lint`, `prealign schemes`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List

import typer

tokenizer_app = typer.Typer(help="Train or inspect tag-safe tokenizers.", no_args_is_help=True)


@tokenizer_app.command("train")
def tokenizer_train(
    data: List[Path] = typer.Option(..., "--data", help="Corpus files (.txt/.jsonl/.parquet) or shard directories; repeatable."),
    out: Path = typer.Option(..., "--out", help="Output directory (an HF tokenizer directory)."),
    vocab_size: int = typer.Option(4096, "--vocab-size", help="Target vocabulary size (BPE may stop below it on small corpora)."),
    scheme: str = typer.Option("seed", "--scheme", help="Tag scheme whose tags become special tokens."),
) -> None:
    """Train a byte-level BPE tokenizer with every tag of the scheme as one special token."""
    from prealign.tokenizer import tag_token_ids, train_tokenizer

    tok = train_tokenizer(data, out, vocab_size=vocab_size, scheme=scheme)
    ids = tag_token_ids(tok, scheme)
    print(f"tokenizer: {out} ({len(tok)} tokens; tags: {', '.join(f'{t}={i}' for t, i in ids.items())})")


def lint(
    paths: List[Path] = typer.Argument(..., help="Files (.txt/.jsonl/.parquet) or directories to lint."),
    scheme: str = typer.Option("seed", "--scheme", help="Tag scheme to check against."),
    field: str = typer.Option("text", "--field", help="JSONL field / Parquet column holding the text."),
    max_problems: int = typer.Option(1000, "--max-problems", help="Stop printing after this many problems (all are counted)."),
) -> None:
    """Structural lint of tagged text: prints path:record:line:col per problem; exit 1 on errors."""
    from prealign.segments import lint_paths

    errors = warnings = shown = 0
    for path, p in lint_paths(paths, scheme=scheme, field=field):
        if p.severity == "error":
            errors += 1
        else:
            warnings += 1
        if shown < max_problems:
            print(p.format(path))
            shown += 1
    print(f"{errors} error(s), {warnings} warning(s) in {', '.join(map(str, paths))} (scheme {scheme})", file=sys.stderr)
    if errors:
        raise typer.Exit(1)


def schemes() -> None:
    """List the tag schemes and their transition tables."""
    from prealign.modes import SCHEMES

    for s in SCHEMES.values():
        print(f"{s.name}: initial {s.initial}; {s.description}")
        for t in s.tags:
            print(f"  {t.source:>20} --{t.text}--> {t.target}")


def register(app: typer.Typer) -> None:
    app.add_typer(tokenizer_app, name="tokenizer")
    app.command("lint")(lint)
    app.command("schemes")(schemes)
