"""Shared fixtures: a throwaway tag-safe tokenizer trained offline in a few seconds."""

from __future__ import annotations

import pytest

from prealign.modes import get_scheme


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
def tokenizer_dir(tmp_path_factory):
    from prealign.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(None, out, vocab_size=400, scheme="seed", texts=sample_tagged_texts())
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from prealign.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir)
