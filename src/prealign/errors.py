"""The one user-facing error type: a message that names the bad value and the fix."""


class PrealignError(Exception):
    """A problem with the user's input or environment.

    The CLI prints it as one line (no traceback) and exits 2; the server answers it as an
    OpenAI-style 4xx. Use it at the edges (config, CLI, HTTP, records), `assert` for internal
    invariants.
    """

    exit_code = 2


def require_extra(module: str, extra: str):
    """Import an optional dependency or raise an error naming the pip extra that brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise PrealignError(f"{module} is not installed: pip install 'prealign[{extra}]' ({e})") from None
