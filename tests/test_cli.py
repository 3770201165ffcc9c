"""The CLI shell: usage errors are one clear message and exit 2, never a traceback."""

from __future__ import annotations

import pytest

from prealign.cli import main


@pytest.mark.parametrize("argv, says", [
    (["generate", "--bogus"], "No such option: --bogus"),
    (["eval", "redteam", "--model", "m", "--lock"], "requires an argument"),
    (["train", "--max-tokens", "many"], "Invalid value"),
    (["no-such-verb"], "No such command"),
])
def test_usage_errors_exit_2_without_a_traceback(argv, says, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
