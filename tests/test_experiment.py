"""The experiment end to end on a miniature plan: every step, results.json's shape, the report,
and resumption after a crash (finished steps are skipped, nothing is trained twice).

    .venv/bin/pytest -q tests/test_experiment.py
"""

import json
import shlex
from pathlib import Path

import pytest

from prealign import experiment as X
from prealign.errors import PrealignError
from prealign.experiment import run as R
from prealign.modes import LockSettings
from tests.test_train import cli_params


def mini_plan():
    return X.get_plan("smoke", docs=120, sft_docs=40, eval_docs=16, train_tokens=6000, train_minutes=0.5,
                      sft_tokens=2000, sft_minutes=0.2, n_heldout=10, n_wild=4, max_new_tokens=6,
                      human_passages=6, human_items=4, probe_docs=4, seq_len=64, hidden_size=32, n_layers=2,
                      vocab_size=400)


@pytest.mark.slow
def test_experiment_runs_resumes_and_reports(tmp_path, monkeypatch):
    import torch

    torch.set_num_threads(1)
    try:
        from prealign.evals.attacks import wild_jailbreaks

        wild_jailbreaks()
    except PrealignError as e:
        pytest.skip(str(e))
    out = tmp_path / "exp"
    plan = mini_plan()

    def killed(*a, **k):
        raise KeyboardInterrupt("killed during probes")

    monkeypatch.setattr(R, "_probes", killed)
    with pytest.raises(KeyboardInterrupt):
        X.run_experiment(plan, out, threads=1)
    assert not (out / "results.json").exists()
    done = {p.name: p.stat().st_mtime_ns for p in (out / "steps").glob("*.json")}
    assert "train__tagged.json" in done and "eval__tagged_plus_lock.json" in done and "probes.json" not in done
    model_meta = (out / "models" / "mle" / "prealign_model.json").stat().st_mtime_ns

    monkeypatch.undo()
    logs = []
    res_path = X.run_experiment(plan, out, threads=1, log=logs.append)
    assert any("train/mle (done earlier)" in m for m in logs)
    assert all((out / "steps" / n).stat().st_mtime_ns == t for n, t in done.items())  # not redone
    assert (out / "models" / "mle" / "prealign_model.json").stat().st_mtime_ns == model_meta

    res = json.loads(res_path.read_text())
    assert set(res["variants"]) == {"mle", "filtered", "mle+sft", "tagged", "tagged+mask", "tagged+lock", "tagged+guard"}
    # the guarded row: calibrated on the calib split (probe/ saved with the model), guard metrics, a plot
    g = res["variants"]["tagged+guard"]
    assert (out / "models" / "tagged" / "probe" / "probe.json").exists() and g["guard_probe"]["k"] >= 1
    for suite in ("world-heldout", "wild"):
        for part in ("benign", "hazard"):
            fire = g["guard"][suite][part]["guard_fire_rate"]
            assert fire["n"] == g["guard"][suite][part]["n"] and 0 <= fire["lo"] <= fire["hi"] <= 1
    assert res["guard_plot"] and (out / res["guard_plot"]).exists()
    assert any(c.startswith("prealign probe train") for c in res["commands"])
    for v in res["variants"].values():
        for suite in ("world-heldout", "wild"):
            lr = v["redteam"][suite]["overall"]["leak_rate"]
            assert {"value", "lo", "hi"} <= set(lr) and 0 <= lr["lo"] <= lr["hi"] <= 1
            assert "by_sft_coverage" in v["redteam"][suite] and "by_tactic" in v["redteam"][suite]
        assert v["humans"]["loss"]["bits_per_char"] > 0
        assert "overall" in v["behaviour"]
    assert res["variants"]["tagged+lock"]["lock_mode"] == "lock" and res["variants"]["mle"]["lock_mode"] is None
    assert (out / "data" / "eval" / "attacks-wild.jsonl").exists() and (out / "models" / "mle+sft" / "config.json").exists()
    assert res["probes"]["mode"] and (out / "evals" / "probes.png").exists()
    assert any(c.startswith("prealign train") for c in res["commands"])
    check_commands(res["commands"], out)
    page = (out / "report.html").read_text()
    assert "tagged+lock" in page and "Wilson" in page and "Probe guard (tagged+guard)" in page

    with pytest.raises(PrealignError, match="another plan"):
        X.run_experiment(X.get_plan("smoke"), out)

    # the CLI verbs on the trained models
    from prealign._util import read_jsonl
    from prealign.cli import main

    # a recorded eval command, run again, gives the same scored replies as its step
    for row in ("tagged+mask", "mle"):
        step = out / "evals" / row / "world-heldout.jsonl"
        words = shlex.split(next(c for c in res["commands"] if f"--outcomes {step}" in c))
        words[words.index("--outcomes") + 1] = str(tmp_path / "again.jsonl")
        assert main(words[1:]) == 0
        assert read_jsonl(tmp_path / "again.jsonl") == read_jsonl(step), row

    m, ev = out / "models", out / "data" / "eval"
    assert main(["eval", "redteam", "--model", str(m / "tagged"), "--attacks", str(ev / "attacks-world-heldout.jsonl"),
                 "--max-new-tokens", "4", "--json", str(tmp_path / "rt.json"), "--outcomes", str(tmp_path / "o1.jsonl")]) == 0
    rt = json.loads((tmp_path / "rt.json").read_text())
    assert rt["overall"]["leak_rate"]["n"] > 0 and rt["responder"] == "tagged/lock"
    assert main(["eval", "redteam", "--model", str(m / "mle+sft"), "--attacks", str(ev / "attacks-world-heldout.jsonl"),
                 "--max-new-tokens", "4", "--outcomes", str(tmp_path / "o2.jsonl")]) == 0
    assert main(["eval", "redteam", "--model", str(m / "mle"), "--attacks", str(ev / "attacks-world-heldout.jsonl"),
                 "--max-new-tokens", "4", "--outcomes", str(tmp_path / "o3.jsonl")]) == 0
    assert main(["eval", "ensemble", str(tmp_path / "o1.jsonl"), str(tmp_path / "o2.jsonl"), str(tmp_path / "o3.jsonl"),
                 "--json", str(tmp_path / "ens.json")]) == 0
    assert json.loads((tmp_path / "ens.json").read_text())["n_models"] == 3
    assert main(["eval", "diff", "--a", str(m / "tagged"), "--b", str(m / "mle"), "--texts", str(ev), "--docs", "2", "--top", "3"]) == 0
    assert main(["eval", "humans", "--model", str(m / "filtered"), "--data", str(ev), "--docs", "8", "--items", "3"]) == 0
    assert main(["eval", "probes", "--model", str(m / "tagged"), "--data", str(ev), "--docs", "4", "--plot", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").exists()


def check_commands(commands, out: Path):
    """Every recorded command parses with the real CLI, and says what its step ran."""
    from prealign.train import TrainConfig

    assert commands and all(c.startswith("prealign ") for c in commands)
    parsed = [(shlex.split(c)[1], cli_params(c)) for c in commands]  # strict: a bad option raises
    evals = {}
    for verb, p in parsed:
        if verb == "eval" and "outcomes" in p:  # eval redteam: one per row and suite
            evals[(Path(p["outcomes"]).parent.name, Path(p["outcomes"]).stem)] = p
    assert set(evals) == {(r, s) for r in X.DEFAULT_ROWS for s in X.SUITES}
    for (row, suite), p in evals.items():
        lock = X.ROWS[row].lock
        assert p["guard"] == X.ROWS[row].guard and p["model"] == str(out / "models" / X.ROWS[row].model)
        if lock is not None:
            assert LockSettings(p["lock"], p["policy"], p["exit_threshold"]) == lock
        assert p["attacks"] == str(out / "data" / "eval" / f"attacks-{suite}.jsonl")
    assert [c for c in commands if "evals/tagged+guard/" in c] and all(
        "--guard on" in c for c in commands if "evals/tagged+guard/" in c)
    assert [c for c in commands if "evals/tagged+mask/" in c] and all(
        "--lock mask" in c for c in commands if "evals/tagged+mask/" in c)
    # a train command is the config the model directory records
    trained = [p for verb, p in parsed if verb == "train"]
    assert {Path(p["out"]).name for p in trained} == set(X.MODELS)
    for p in trained:
        cfg = TrainConfig(**p)
        meta = json.loads((Path(cfg.out) / "prealign_model.json").read_text())["config"]
        want = cfg.resolved()
        if cfg.init_from:  # fine-tuning keeps the shorter of the two contexts
            want["seq_len"] = meta["seq_len"]
        assert meta == {**want, "compile": False}, cfg.out


def test_plans_are_data_and_rows_register():
    assert X.get_plan("quick").train_tokens == X.PLANS["quick"].train_tokens
    with pytest.raises(PrealignError, match="unknown plan field"):
        X.get_plan("quick", docz=3)
    with pytest.raises(PrealignError, match="unknown plan"):
        X.get_plan("huge")
    X.register_row(X.Row("tagged+test", "tagged", LockSettings("lock"), guard="on"))
    try:
        assert "tagged+test" in X.ROWS and "tagged+test" not in X.DEFAULT_ROWS
    finally:
        X.ROWS.pop("tagged+test")
    with pytest.raises(PrealignError, match="unknown row"):
        X.run_experiment("smoke", "/nonexistent/never", rows=["nope"])


def test_rows_are_validated():
    assert X.ROWS["tagged+mask"].lock == LockSettings("mask") and X.ROWS["mle"].lock is None
    assert X.ROWS["tagged+guard"].guard == "on" and X.ROWS["tagged+guard"].lock.mode == "lock"
    with pytest.raises(PrealignError, match="guard must be off or on"):
        X.Row("r", "tagged", LockSettings("lock"), guard="auto")
    for lock in (None, LockSettings("none")):
        with pytest.raises(PrealignError, match="the probe guard needs the lock"):
            X.Row("r", "tagged", lock, guard="on")


def test_redteam_configs_of_the_rows():
    """What each row's eval step runs: its lock and guard, the plan's sampling and samples."""
    plan = mini_plan()
    for name, row in X.ROWS.items():
        cfg = R._redteam_config(plan, row, Path("runs/x/attacks-wild.jsonl"))
        assert cfg.lock == (row.lock or LockSettings()) and cfg.guard == row.guard and cfg.samples == plan.samples
        assert (cfg.sampling.max_new_tokens, cfg.sampling.temperature, cfg.sampling.seed) == (6, plan.temperature, plan.seed)
        p = cli_params(cfg.command("runs/x/models/tagged", outcomes=f"runs/x/evals/{name}/wild.jsonl"))
        assert (p["guard"], p["max_new_tokens"], p["seed"]) == (row.guard, 6, plan.seed)
