"""The probe guard everywhere the lock is: `prealign generate` (GenerateConfig.guard), the chat
REPL's `/guard`, and `prealign serve` (on by default when the model directory holds `probe/`;
the `prealign.guard` / `prealign.guard_threshold` extension fields).

    .venv/bin/pytest -q tests/test_probes_wiring.py
"""

from __future__ import annotations

import numpy as np
import openai
import pytest
import torch

from prealign.errors import PrealignError
from prealign.probes import GUARD_REASON, Probe, layer_modules
from prealign.tokenizer import tag_token_ids
from tests._lock_support import make_tokenizer, save_model_dir, tiny_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def dirs(tok, tmp_path_factory):
    """Two model directories of one tiny model whose embeddings put +1 on coordinate 0 for every
    ordinary word: one holds a probe reading that coordinate (k=1: the guard fires at the first
    word of any reply), the other holds no probe."""
    model = tiny_model(tok)
    special = set(tok.all_special_ids) | set(tag_token_ids(tok, "seed").values())
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[:, 0] = -1.0
        emb[[i for i in range(len(tok)) if i not in special], 0] = 1.0
    with_probe = save_model_dir(tmp_path_factory.mktemp("guarded"), model, tok)
    without = save_model_dir(tmp_path_factory.mktemp("plain"), model, tok)
    H = model.config.hidden_size
    W = np.zeros((3, H), np.float32)
    W[0, 0] = 6.0  # P(human) ≈ 0.995 on words, ≈ 0.001 elsewhere
    Probe(W, np.zeros(3, np.float32), 0, ("human", "ai", "quoted_human"), ("human",), 0.5, 1, H,
          len(layer_modules(model)) - 1, "seed", "embeddings").save(with_probe)
    return with_probe, without


def test_generate_config_guard(dirs):
    from prealign.generate import GenerateConfig, generate_texts, load_for_generation

    guarded, plain = dirs
    m, tok = load_for_generation(guarded)
    [on] = generate_texts(m, tok, ["hello there"], GenerateConfig(max_new_tokens=6))  # auto finds probe/
    assert on.stop_reason == GUARD_REASON
    [off] = generate_texts(m, tok, ["hello there"], GenerateConfig(max_new_tokens=6, guard="off"))
    assert off.stop_reason != GUARD_REASON
    [high] = generate_texts(m, tok, ["hello there"], GenerateConfig(max_new_tokens=6, guard_threshold=0.999))
    assert high.stop_reason != GUARD_REASON
    [path] = generate_texts(m, tok, ["hello there"], GenerateConfig(max_new_tokens=6, guard=str(guarded / "probe")))
    assert path.stop_reason == GUARD_REASON
    m2, tok2 = load_for_generation(plain)
    [auto] = generate_texts(m2, tok2, ["hello there"], GenerateConfig(max_new_tokens=6))
    assert auto.stop_reason != GUARD_REASON
    with pytest.raises(PrealignError, match="no probe"):
        generate_texts(m2, tok2, ["hello there"], GenerateConfig(max_new_tokens=6, guard="on"))
    with pytest.raises(PrealignError, match="guard-threshold"):
        GenerateConfig(guard_threshold=1.5)


def test_chat_guard_command(dirs):
    from prealign.chat import ChatSession
    from prealign.generate import load_for_generation

    m, tok = load_for_generation(dirs[0])
    s = ChatSession(m, tok, temperature=0, max_new_tokens=6)
    assert s.reply("hello").stop_reason == GUARD_REASON
    assert s.command("/guard off") == "probe guard off"
    assert s.reply("hello").stop_reason != GUARD_REASON
    assert "0.999" in s.command("/guard 0.999")
    assert s.reply("hello").stop_reason != GUARD_REASON
    assert "on" in s.command("/guard on") and s.reply("hello").stop_reason == GUARD_REASON
    assert s.command("/guard").startswith("usage: /guard")
    m2, tok2 = load_for_generation(dirs[1])
    s2 = ChatSession(m2, tok2, temperature=0, max_new_tokens=6)
    assert s2.guard is None and "no probe" in s2.command("/guard on")


def _chat(client, name, **ext):
    return client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hello"}], max_tokens=6,
                                          temperature=0, extra_body={"prealign": ext} if ext else None)


def test_server_honours_the_guard_and_its_off_switch(dirs):
    from prealign.serve import ServeConfig, run_in_thread

    guarded, plain = dirs
    with run_in_thread(guarded, config=ServeConfig(model_name="g")) as h:
        c = openai.OpenAI(base_url=h.url, api_key="none", max_retries=0, timeout=60)
        ext = _chat(c, "g").model_extra["prealign"]
        assert ext["stop_reason"] == GUARD_REASON  # on by default: the directory holds probe/
        assert _chat(c, "g", guard=False).model_extra["prealign"]["stop_reason"] != GUARD_REASON
        assert _chat(c, "g", guard_threshold=0.999).model_extra["prealign"]["stop_reason"] != GUARD_REASON
        assert _chat(c, "g", guard=True, guard_threshold=0.3).model_extra["prealign"]["stop_reason"] == GUARD_REASON
        for bad in ({"guard": "yes"}, {"guard_threshold": 1.0}, {"guard_threshold": True}):
            with pytest.raises(openai.BadRequestError, match="guard"):
                _chat(c, "g", **bad)
    with run_in_thread(guarded, config=ServeConfig(model_name="g", guard="off")) as h:
        c = openai.OpenAI(base_url=h.url, api_key="none", max_retries=0, timeout=60)
        assert _chat(c, "g").model_extra["prealign"]["stop_reason"] != GUARD_REASON
        with pytest.raises(openai.BadRequestError, match="no probe guard"):
            _chat(c, "g", guard=True)
    with run_in_thread(plain, config=ServeConfig(model_name="p")) as h:
        c = openai.OpenAI(base_url=h.url, api_key="none", max_retries=0, timeout=60)
        assert _chat(c, "p").model_extra["prealign"]["stop_reason"] != GUARD_REASON


def test_cli_generate_guard_flags(dirs):
    import json

    import typer
    from typer.testing import CliRunner

    from prealign._cli import generate as generate_cli

    app = typer.Typer()
    generate_cli.register(app)
    base = ["generate", "--model", str(dirs[0]), "--prompt", "hello", "--max-new-tokens", "6", "--json"]
    for extra, fired in (([], True), (["--guard", "off"], False), (["--guard-threshold", "0.999"], False), (["--guard", "on"], True)):
        run = CliRunner().invoke(app, base + extra)
        assert run.exit_code == 0, run.output
        assert (json.loads(run.stdout)["stop_reason"] == GUARD_REASON) is fired, extra
