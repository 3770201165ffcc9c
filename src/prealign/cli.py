"""`prealign <verb>`: a thin shell. Every verb parses its arguments, builds a config and calls one
public library function; a `PrealignError` prints as one line and exits 2 (no traceback).

The verbs are registered by small modules in `prealign/_cli/`, one per area, so each area's
arguments sit next to each other; none of them holds logic of its own.
"""

from __future__ import annotations

import os
import sys

import typer

from prealign.errors import PrealignError

app = typer.Typer(
    name="prealign",
    help="Alignment pretraining with mode tags: corpus, training, locked generation, evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


_registered = False


def _register() -> None:
    """Add every area's verbs to `app`, once per process (main() may be called many times)."""
    global _registered
    if _registered:
        return
    from prealign._cli import attack, evals, foundation, generate, probe, synth, train, world

    for area in (foundation, world, train, generate, probe, evals, synth, attack):
        area.register(app)
    _registered = True


def _quiet_libraries() -> None:
    """transformers draws a progress bar for every weight load and save; our own bars say more.
    (Set through the environment before transformers is imported: importing it here would cost
    every verb a second.)"""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _click_exceptions():
    """The exceptions module of the click that typer runs on (recent typer ships its own copy)."""
    try:
        from typer._click import exceptions
    except ImportError:  # typer on the separate click package
        from click import exceptions
    return exceptions


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    _register()
    try:
        rc = app(args=argv, standalone_mode=False)
        if isinstance(rc, int):
            return rc
    except PrealignError as e:
        print(f"prealign: error: {e}", file=sys.stderr)
        return e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except SystemExit as e:  # click's own exits (bad usage prints its message first)
        return e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        print("prealign: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # usage errors surface here in non-standalone mode
        click = _click_exceptions()
        if isinstance(e, click.ClickException):
            e.show()
            return 2
        if isinstance(e, click.Abort):
            return 130
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
