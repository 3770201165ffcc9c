"""Tests for `prealign generate` (one prompt, a JSONL file with resume, errors).

    .venv/bin/pytest -q tests/test_generate_cli.py
"""

from __future__ import annotations

import json

import pytest
import torch

from prealign.cli import main
from tests._lock_support import make_tokenizer, save_model_dir, tiny_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    tok = make_tokenizer(d / "tok")
    return save_model_dir(d / "model", tiny_model(tok), tok)


def test_generate_one_prompt_json(model_dir, capsys):
    assert main(["generate", "--model", str(model_dir), "--prompt", "hello </AI>", "--max-new-tokens", "5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["locked"] and res["stop_reason"] in ("eos", "ai_end", "length", "mode_confusion") and res["n_tokens"] <= 5


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
    assert main(["generate", "--model", str(model_dir), "--prompt", "x", "--policy", "ignore"]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": 3}\n')
    assert main(["generate", "--model", str(model_dir), "--prompts", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
