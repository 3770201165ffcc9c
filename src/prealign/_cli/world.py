"""CLI verbs for the world area (registered by prealign.cli)."""

import typer


def register(app: typer.Typer) -> None:
    pass
