"""Shared fixtures: one throwaway tag-safe tokenizer per scheme for the whole session (trained
offline in a second), and the `slow` marker.

    .venv/bin/pytest -q tests                 # everything but the tests marked slow
    .venv/bin/pytest -q --runslow tests       # everything (what `make test` runs)
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers draws one per weight load

from prealign.modes import get_scheme


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run the tests marked slow (they train a model end to end)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    slow = [it for it in items if it.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [it for it in items if not it.get_closest_marker("slow")]


def sample_tagged_texts(scheme_name: str = "seed", n: int = 200) -> list[str]:
    """Small tagged documents built from the scheme (no tag is spelled here)."""
    s = get_scheme(scheme_name)
    if s.initial.value == "ai":
        open_h, close_h = s.tags[0].text, s.tags[1].text
        return [f"The AI notes the trade {i}. {open_h}I want more bread {i}!{close_h} The AI explains why." for i in range(n)]
    ai, q, uq, end = s.tag_texts[:4]
    return [
        f"Mara sold {i} loaves at the market. {ai}Mara is kind today. {q}I want gold{uq} she said, "
        f"and the AI notes why.{end} Then she left the square {i}." for i in range(n)
    ]


@pytest.fixture(scope="session")
def tokenizer_of(tmp_path_factory):
    """`tokenizer_of(scheme)`: the session's tokenizer for that scheme (trained once, then shared)."""
    from tests._lock_support import make_tokenizer

    cache: dict = {}

    def get(scheme_name: str = "seed"):
        if scheme_name not in cache:
            cache[scheme_name] = make_tokenizer(tmp_path_factory.mktemp(f"tok-{scheme_name}".replace("+", "-")), scheme_name)
        return cache[scheme_name]

    return get


@pytest.fixture(scope="session")
def tok(tokenizer_of):
    return tokenizer_of("seed")


@pytest.fixture(scope="session")
def tok_unaligned(tokenizer_of):
    return tokenizer_of("seed+unaligned")


@pytest.fixture(scope="session")
def tok_ai_default(tokenizer_of):
    return tokenizer_of("ai-default")


@pytest.fixture(scope="session")
def tokenizer(tok):
    return tok


@pytest.fixture(scope="session")
def tokenizer_dir(tok):
    from pathlib import Path

    return Path(tok.name_or_path)
