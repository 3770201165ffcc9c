"""The probe guard everywhere the lock is: a guard setting resolved by `resolve_guard` for
`generate_texts` / `prealign generate --guard`, the chat REPL's `/guard`, and `prealign serve`
(on by default when the model directory holds `probe/`; the `prealign.guard` /
`prealign.guard_threshold` extension fields).

    .venv/bin/pytest -q tests/test_probes_wiring.py
"""

from __future__ import annotations

import numpy as np
import openai
import pytest
import torch

from prealign.errors import PrealignError
from prealign.lock import LockSettings
from prealign.model import load_model
from prealign.modes import STOP_PROBE_GUARD
from prealign.probes import Probe, ProbeGuard, layer_modules, resolve_guard
from prealign.sampling import Sampling
from prealign.tokenizer import tag_token_ids
from tests._lock_support import save_model_dir, tiny_model

torch.set_num_threads(1)


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


def test_generate_texts_with_a_resolved_guard(dirs):
    from prealign.generate import generate_texts

    guarded, plain = dirs
    m, tok = load_model(guarded)
    draw = Sampling(max_new_tokens=6, temperature=0)

    def reply(guard, lock=LockSettings()):
        return generate_texts(m, tok, ["hello there"], lock, draw, guard=guard)[0]

    on = resolve_guard(m, tok, "auto")  # auto finds probe/
    assert isinstance(on, ProbeGuard) and reply(on).stop_reason == STOP_PROBE_GUARD
    assert resolve_guard(m, tok, "off") is None and reply(None).stop_reason != STOP_PROBE_GUARD
    assert reply(resolve_guard(m, tok, "auto", threshold=0.999)).stop_reason != STOP_PROBE_GUARD
    assert reply(resolve_guard(m, tok, str(guarded / "probe"))).stop_reason == STOP_PROBE_GUARD
    assert reply(on, LockSettings("mask")).stop_reason == STOP_PROBE_GUARD  # the guard is an exit of its own
    unlocked = reply(on, LockSettings("none"))  # no lock: no exits at all
    assert unlocked.stop_reason != STOP_PROBE_GUARD and not unlocked.locked
    m2, tok2 = load_model(plain)
    assert resolve_guard(m2, tok2, "auto") is None
    with pytest.raises(PrealignError, match="no probe"):
        resolve_guard(m2, tok2, "on")
    with pytest.raises(PrealignError, match="threshold must be in \\(0, 1\\), got 1.5"):
        resolve_guard(m, tok, "auto", threshold=1.5)
    with pytest.raises(PrealignError, match="resolve_guard"):
        reply("auto")


def test_chat_guard_command(dirs):
    from prealign.chat import ChatSession

    m, tok = load_model(dirs[0])
    draw = Sampling(temperature=0, max_new_tokens=6)
    s = ChatSession(m, tok, sampling=draw, guard=resolve_guard(m, tok, "auto"))
    assert s.reply("hello").stop_reason == STOP_PROBE_GUARD
    assert s.command("/guard off") == "probe guard off"
    assert s.guard is None and s.reply("hello").stop_reason != STOP_PROBE_GUARD
    assert "0.999" in s.command("/guard 0.999")
    assert s.guard.threshold == 0.999 and s.reply("hello").stop_reason != STOP_PROBE_GUARD
    assert "on" in s.command("/guard on") and s.reply("hello").stop_reason == STOP_PROBE_GUARD
    assert s.command("/guard").startswith("usage: /guard")
    assert "threshold must be in (0, 1), got 1.5" in s.command("/guard 1.5") and s.guard.threshold != 1.5
    assert s.command("/guard x") == "not a number: x"
    # a session started without a guard calibrates none: /guard on loads the directory's probe
    s1 = ChatSession(m, tok, sampling=draw)
    assert s1.guard is None and s1.reply("hello").stop_reason != STOP_PROBE_GUARD
    assert "probe guard on" in s1.command("/guard on") and s1.reply("hello").stop_reason == STOP_PROBE_GUARD
    m2, tok2 = load_model(dirs[1])
    s2 = ChatSession(m2, tok2, sampling=draw, guard=resolve_guard(m2, tok2, "auto"))
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
        assert ext["stop_reason"] == STOP_PROBE_GUARD  # on by default: the directory holds probe/
        assert _chat(c, "g", guard=False).model_extra["prealign"]["stop_reason"] != STOP_PROBE_GUARD
        assert _chat(c, "g", guard_threshold=0.999).model_extra["prealign"]["stop_reason"] != STOP_PROBE_GUARD
        assert _chat(c, "g", guard=True, guard_threshold=0.3).model_extra["prealign"]["stop_reason"] == STOP_PROBE_GUARD
        for bad in ({"guard": "yes"}, {"guard_threshold": 1.0}, {"guard_threshold": True}):
            with pytest.raises(openai.BadRequestError, match="guard"):
                _chat(c, "g", **bad)
    with run_in_thread(guarded, config=ServeConfig(model_name="g", guard="off")) as h:
        c = openai.OpenAI(base_url=h.url, api_key="none", max_retries=0, timeout=60)
        assert _chat(c, "g").model_extra["prealign"]["stop_reason"] != STOP_PROBE_GUARD
        with pytest.raises(openai.BadRequestError, match="no probe guard"):
            _chat(c, "g", guard=True)
    with run_in_thread(plain, config=ServeConfig(model_name="p")) as h:
        c = openai.OpenAI(base_url=h.url, api_key="none", max_retries=0, timeout=60)
        assert _chat(c, "p").model_extra["prealign"]["stop_reason"] != STOP_PROBE_GUARD


def test_cli_generate_guard_flags(dirs):
    import json

    import typer
    from typer.testing import CliRunner

    from prealign._cli import generate as generate_cli

    app = typer.Typer()
    generate_cli.register(app)
    base = ["generate", "--model", str(dirs[0]), "--prompt", "hello", "--max-new-tokens", "6", "--json", "--temperature", "0"]
    for extra, fired in (([], True), (["--guard", "off"], False), (["--guard-threshold", "0.999"], False), (["--guard", "on"], True),
                         (["--guard", str(dirs[0] / "probe")], True), (["--lock", "mask"], True), (["--lock", "none"], False)):
        run = CliRunner().invoke(app, base + extra)
        assert run.exit_code == 0, run.output
        assert (json.loads(run.stdout)["stop_reason"] == STOP_PROBE_GUARD) is fired, extra
    for extra, words in ((["--guard-threshold", "1.5"], "threshold must be in (0, 1)"),
                         (["--guard", "on", "--model", str(dirs[1])], "no probe")):
        run = CliRunner().invoke(app, base + extra)
        assert isinstance(run.exception, PrealignError) and words in str(run.exception), (extra, run.exception)
    # without the lock no guard is resolved at all: a bad guard setting is never read
    run = CliRunner().invoke(app, base + ["--lock", "none", "--guard", "on", "--model", str(dirs[1])])
    assert run.exit_code == 0, run.output
