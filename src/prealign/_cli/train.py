"""CLI verbs for the train area (registered by prealign.cli)."""

import typer


def register(app: typer.Typer) -> None:
    pass
