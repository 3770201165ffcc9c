"""CLI verbs for the synth area (registered by prealign.cli)."""

import typer


def register(app: typer.Typer) -> None:
    pass
