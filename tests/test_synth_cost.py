"""The cost model: the seed's figure, every number a flag, and extrapolation from a known ledger.

    .venv/bin/pytest -q tests/test_synth_cost.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prealign.cli import main
from prealign.errors import PrealignError
from prealign.synth.cost import CostConfig, ledger_cost, seed_cost


def test_seed_arithmetic():
    r = seed_cost()
    # 1e15 tokens x 10 passes = 1e16 processed; 25% generated at $7.50/M, 75% read at $2.50/M
    assert r["generated_tokens"] == pytest.approx(2.5e15) and r["read_tokens"] == pytest.approx(7.5e15)
    assert r["generate_usd"] == pytest.approx(18.75e9) and r["read_usd"] == pytest.approx(18.75e9)
    assert r["total_usd"] == pytest.approx(37.5e9)  # the seed's "O($40 billion)"
    assert r["generated_per_kept_token"] == pytest.approx(2.5)  # "2.5 times as much text as we use"


def test_every_number_is_a_flag(capsys):
    assert main(["cost", "--tokens", "2e12", "--passes", "4", "--generate-fraction", "0.5",
                 "--generate-price", "10", "--read-price", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["total_usd"] == pytest.approx(2e12 * 4 * (0.5 * 10 + 0.5 * 1) / 1e6)
    assert main(["cost"]) == 0
    assert "$37.50 billion" in capsys.readouterr().out


def test_bad_numbers_are_one_line_errors(capsys, tmp_path):
    assert main(["cost", "--generate-fraction", "1.5"]) == 2
    assert "generate fraction" in capsys.readouterr().err
    with pytest.raises(PrealignError, match="no finished ranks"):
        ledger_cost(str(tmp_path))


def known_run(root: Path) -> Path:
    """A run of 2 finished ranks and 1 unfinished: 3 kept docs of 100 tokens each, 1 dropped."""
    run = root / "run"
    (run / "completions").mkdir(parents=True)
    (run / "ledger").mkdir()
    for rank, kept, rejected in ((0, 2, 1), (1, 1, 0)):
        (run / f"part-{rank:05d}.parquet").write_bytes(b"")  # existence is what marks a finished part
        (run / "completions" / f"{rank:05d}").write_text(json.dumps({"kept": kept, "rejected": rejected, "escalated": 0,
                                                                      "kept_tokens": 100 * kept}))
    lines = {
        0: [("render", 400, 100, "a", False), ("render", 400, 100, "b", False), ("render", 400, 100, "c", False),
            ("grade", 600, 50, "d", False), ("grade", 600, 50, "e", False), ("grade", 600, 50, "f", False),
            ("render", 400, 100, "a", True)],  # a resumed request answered from the cache: counted once
        1: [("render", 400, 100, "g", False), ("grade", 600, 50, "h", False)],
        2: [("render", 9999, 9999, "z", False)],  # unfinished rank: not part of the measurement
    }
    for rank, entries in lines.items():
        with open(run / "ledger" / f"rank-{rank:05d}.jsonl", "w") as f:
            for p, pt, ct, key, cached in entries:
                f.write(json.dumps({"pass": p, "model": "m", "prompt_tokens": pt, "completion_tokens": ct, "seconds": 0.1,
                                    "cached": cached, "key": key, "rank": rank}) + "\n")
    return run


def test_ledger_extrapolation_on_a_known_ledger(tmp_path, capsys):
    run = known_run(tmp_path)
    r = ledger_cost(str(run), CostConfig(tokens=1e6, generate_usd_per_m=10, read_usd_per_m=1))
    m = r["measured"]
    # 4 renders (400 read, 100 written) + 4 grades (600 read, 50 written) for 3 kept docs of 100 tokens
    assert (m["kept_documents"], m["dropped_documents"], m["kept_tokens"]) == (3, 1, 300)
    assert (m["read_tokens"], m["generated_tokens"]) == (4000, 600)
    assert r["read_per_kept_token"] == pytest.approx(4000 / 300)
    assert r["generated_per_kept_token"] == pytest.approx(2.0)
    assert r["passes"] == pytest.approx(4600 / 300) and r["generate_fraction"] == pytest.approx(600 / 4600)
    assert r["total_usd"] == pytest.approx(1e6 * (4000 / 300 * 1 + 2.0 * 10) / 1e6)
    assert r["documents_needed"] == pytest.approx(1e6 / 100)
    assert r["per_pass"]["render"]["read_per_kept_token"] == pytest.approx(1600 / 300)
    assert sum(p["usd"] for p in r["per_pass"].values()) == pytest.approx(r["total_usd"])
    assert main(["cost", "--ledger", str(run), "--tokens", "1e6", "--generate-price", "10", "--read-price", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_usd"] == pytest.approx(r["total_usd"])
