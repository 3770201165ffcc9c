"""Tests for `prealign generate` (one prompt, a JSONL file with resume, the lock and sampling
flags, errors).

    .venv/bin/pytest -q tests/test_generate_cli.py
"""

from __future__ import annotations

import json

import pytest
import torch

from prealign.cli import main
from tests._lock_support import save_model_dir, tiny_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tok, tmp_path_factory):
    return save_model_dir(tmp_path_factory.mktemp("m") / "model", tiny_model(tok), tok)


def run_json(capsys, model_dir, *flags) -> dict:
    capsys.readouterr()
    assert main(["generate", "--model", str(model_dir), "--prompt", "hello </AI>", "--max-new-tokens", "5", "--json",
                 *flags]) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_one_prompt_json(model_dir, capsys):
    res = run_json(capsys, model_dir)
    assert res["locked"] and res["policy"] == "stop"
    assert res["stop_reason"] in ("eos", "ai_end", "length", "mode_confusion") and res["n_tokens"] <= 5


def test_lock_flags(model_dir, capsys):
    """`--lock none|mask|lock`: an exit threshold of 0 makes any illegal-tag mass a mode exit, so
    the full lock stops at the first step, the mask alone never exits, and no lock is unlocked."""
    full = run_json(capsys, model_dir, "--exit-threshold", "0", "--temperature", "0")
    assert full["locked"] and full["stop_reason"] == "mode_confusion" and full["exits"] == ["mode_confusion"]
    assert full["n_tokens"] == 1 and full["segments"] == []
    mask = run_json(capsys, model_dir, "--lock", "mask", "--exit-threshold", "0", "--temperature", "0")
    assert mask["locked"] and mask["exits"] == [] and mask["stop_reason"] in ("eos", "ai_end", "length")
    assert mask["max_masked_mass"] > 0  # the mass was measured, and the mask alone never exits on it
    none = run_json(capsys, model_dir, "--lock", "none", "--exit-threshold", "0", "--temperature", "0")
    assert not none["locked"] and none["exits"] == [] and none["stop_reason"] != "mode_confusion"
    q = run_json(capsys, model_dir, "--exit-threshold", "0", "--policy", "quarantine", "--temperature", "0")
    assert q["locked"] and q["policy"] == "quarantine" and q["exits"][0] == "mode_confusion" and q["text"] == ""
    assert all(seg["quarantined"] and seg["privilege"] == "none" for seg in q["segments"])


def test_temperature_zero_is_greedy(model_dir, capsys):
    from prealign.generate import generate_locked
    from prealign.model import load_model

    greedy = [run_json(capsys, model_dir, "--temperature", "0", "--seed", str(seed)) for seed in (1, 2, 3)]
    assert greedy[0] == greedy[1] == greedy[2]  # greedy ignores the seed
    m, tok = load_model(model_dir)
    want = generate_locked(m, tok, "hello </AI>", max_new_tokens=5, do_sample=False)
    assert greedy[0] == want.to_dict()
    # the default is true sampling at temperature 1, seeded by --seed
    sampled = [run_json(capsys, model_dir, "--seed", str(seed)) for seed in (1, 1, 2, 3, 4)]
    assert sampled[0] == sampled[1]
    assert any(s != greedy[0] for s in sampled)


def test_generate_file_resumes_without_duplicates(model_dir, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(7)))
    out = tmp_path / "out.jsonl"
    args = ["generate", "--model", str(model_dir), "--prompts", str(prompts), "--out", str(out), "--max-new-tokens", "4",
            "--temperature", "0.7", "--batch-size", "1"]
    assert main(args) == 0
    full = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["index"] for r in full) == list(range(7))
    # simulate an interruption: chunks hold 4 records; keep the first chunk and half of the second
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:5]) + lines[5][:10])
    capsys.readouterr()
    assert main(args) == 0
    assert "wrote 3 new" in capsys.readouterr().out
    again = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["index"] for r in again) == list(range(7))
    assert {r["index"]: r["text"] for r in again} == {r["index"]: r["text"] for r in full}  # same seeds, same replies


def test_generate_errors_are_one_line(model_dir, tmp_path, capsys):
    assert main(["generate", "--model", str(model_dir)]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    capsys.readouterr()
    for flags, words in ((["--policy", "ignore"], ("policy", "'ignore'")), (["--lock", "off"], ("lock", "'off'")),
                         (["--exit-threshold", "1.5"], ("exit_threshold", "1.5")),
                         (["--temperature", "-1"], ("temperature", "-1")), (["--top-p", "0"], ("top_p", "0")),
                         (["--max-new-tokens", "0"], ("max_new_tokens", "0"))):
        assert main(["generate", "--model", str(model_dir), "--prompt", "x", *flags]) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith("prealign: error: ") and err.count("\n") == 1, err
        assert all(w in err for w in words), err
    import typer
    from typer.testing import CliRunner

    from prealign._cli import generate as generate_cli

    app = typer.Typer()
    generate_cli.register(app)
    for gone in (["--greedy"], ["--no-lock"], ["--no-exit"]):  # replaced by --temperature 0 and --lock
        run = CliRunner().invoke(app, ["generate", "--model", str(model_dir), "--prompt", "x", *gone])
        assert run.exit_code == 2 and "No such option" in run.output, (gone, run.output)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": 3}\n')
    assert main(["generate", "--model", str(model_dir), "--prompts", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
