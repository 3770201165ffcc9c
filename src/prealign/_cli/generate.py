"""CLI verbs for the generate area (registered by prealign.cli)."""

import typer


def register(app: typer.Typer) -> None:
    pass
