"""DDP test: `torchrun --nproc_per_node=2 -m prealign.cli train` (gloo, CPU) gives the same training
as one process with the same global batch, within float tolerance; both run the line that
`TrainConfig.command()` records.

    .venv/bin/pytest -q tests/test_train_ddp.py -x
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys

import pytest
import torch

from prealign.data import write_shard

torch.set_num_threads(1)


def test_two_process_ddp_matches_one_process(tmp_path, tokenizer_dir):
    from safetensors.torch import load_file

    from prealign.train import TrainConfig
    from tests.test_train import make_docs

    docs = make_docs(200, seed=5)
    write_shard(tmp_path / "data", 0, [{"text": t, "variant": "tagged", "scheme": "seed"} for t in docs])
    # both runs are the line `TrainConfig.command()` records, once plain and once under torchrun
    config = TrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "one"), tokenizer=str(tokenizer_dir), preset="tiny",
                         max_tokens=12 * 8 * 32, seq_len=32, batch_size=8, warmup_steps=2, log_every=1, eval_every=6,
                         val_fraction=0.1, progress=False, threads=1)
    line = shlex.split(config.command())
    assert line[:2] == ["prealign", "train"]
    two_line = shlex.split(dataclasses.replace(config, out=str(tmp_path / "two")).command())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    one = subprocess.run([sys.executable, "-m", "prealign.cli", *line[1:]], env=env, capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "prealign.cli", *two_line[1:]], env=env, capture_output=True, text=True, timeout=180)
    assert two.returncode == 0, two.stderr[-3000:]

    m1 = [json.loads(l) for l in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(l) for l in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in m1] == [r["step"] for r in m2] and len(m1) >= 12
    for a, b in zip(m1, m2):
        key = "loss" if "loss" in a else "val_loss"
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-4)
    meta1 = json.loads((tmp_path / "one" / "prealign_model.json").read_text())
    meta2 = json.loads((tmp_path / "two" / "prealign_model.json").read_text())
    assert meta2["world_size"] == 2 and meta2["tokens_seen"] == 12 * 8 * 32
    assert meta1["config"] == {**config.resolved(), "compile": False}  # what ran is what the line says (no compile on CPU)
    w1, w2 = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=2e-4, rtol=1e-3), k
    # and the processes really did split the batch: a different global batch changes the run
    assert m1[0]["loss"] != pytest.approx(m1[-2]["loss"])
