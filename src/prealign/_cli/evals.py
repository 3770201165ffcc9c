"""CLI verbs for the evals area (registered by prealign.cli)."""

import typer


def register(app: typer.Typer) -> None:
    pass
