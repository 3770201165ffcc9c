"""The experiment end to end on a miniature plan: every step, results.json's shape (equal budgets,
seeds pooled, diagnostics, the verdict), the report, resumption after a crash (finished steps are
skipped, nothing is trained twice), plan overrides, the sweep and the gpu plan at smoke size.

    .venv/bin/pytest -q tests/test_experiment.py
"""

import dataclasses
import json
import shlex
from pathlib import Path

import pytest

from prealign import experiment as X
from prealign.errors import PrealignError
from prealign.experiment import run as R
from prealign.modes import LockSettings
from tests.test_train import cli_params


def mini_plan(name: str = "smoke", **more):
    return X.get_plan(name, **{**dict(docs=120, sft_docs=40, eval_docs=16, train_tokens=6000, sft_share=0.25,
                                      max_train_minutes=None, n_heldout=10, n_wild=4, max_new_tokens=6,
                                      human_passages=6, human_items=4, probe_docs=4, seq_len=64, hidden_size=32,
                                      n_layers=2, vocab_size=400, diagnostic_requests=12, lint_samples=4,
                                      calib_replies=8, seeds=2, preset="tiny", batch_size=None), **more})


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
    assert {"train__tagged-s1.json", "eval__tagged_plus_lock__s1.json", "diagnostics.json"} <= set(done)
    assert "probes.json" not in done
    model_meta = (out / "models" / "mle-s0" / "prealign_model.json").stat().st_mtime_ns

    monkeypatch.undo()
    logs = []
    res_path = X.run_experiment(plan, out, threads=1, log=logs.append)
    assert any("train/mle-s0 (done earlier)" in m for m in logs)
    assert all((out / "steps" / n).stat().st_mtime_ns == t for n, t in done.items())  # not redone
    assert (out / "models" / "mle-s0" / "prealign_model.json").stat().st_mtime_ns == model_meta

    res = json.loads(res_path.read_text())
    assert set(res["variants"]) == set(X.DEFAULT_ROWS)
    # budgets: every pretraining run saw the same tokens; fine-tuning is the planned share
    b = res["budgets"]
    runs = {m: [f"{m}-s{k}" for k in R.seeds_of(plan, m)] for m in X.plans.models_of(X.DEFAULT_ROWS)}
    pre = {r for m, rs in runs.items() if X.MODELS[m].init_from is None for r in rs}
    assert {"tagged-s0", "tagged-s1", "mle-s0", "mle-s1", "filtered-s0", "conditional-s0", "upsampled-s0"} <= pre
    assert set(b["pretraining"]) == pre and set(b["finetuning"]) == {r for rs in runs.values() for r in rs} - pre
    assert {"mle+sft-s0", "mle+sft-s1", "mle+xsft-s0", "upsampled+sft-s0"} <= set(b["finetuning"])
    assert len(set(b["pretraining"].values())) == 1 and b["equal"] and b["spread"] == 0
    assert b["sft_share_seen"] == pytest.approx(0.25, rel=0.35)
    # did the models learn their world? measured, and (at this size) they did not: no verdict
    checks = res["diagnostics"]["checks"]
    assert {"mle_leak_direct", "mle_yield_manipulated", "sft_refusal_covered", "tagged_lint_clean", "mle_benign_answer"} <= set(checks)
    assert all(0 <= c["rate"]["lo"] <= c["rate"]["hi"] <= 1 for c in checks.values())
    by_task = res["diagnostics"]["benign_by_task"]  # which benign skills the pretrained models learnt
    assert {"mle", "mle_hill"} <= set(by_task) and all(r["n"] > 0 for v in by_task.values() for r in v.values())
    assert sum(r["n"] for r in by_task["mle"].values()) == checks["mle_benign_answer"]["rate"]["n"]
    assert "by_task" in res["variants"]["mle"]["helpfulness"]["world-heldout"]
    assert res["verdict"]["decisive"] is False and any("decides nothing" in r for r in res["verdict"]["reasons"])
    # seeds: the deciding rows pool two seeds, each seed's figure beside the pooled one
    v = res["variants"]["tagged+lock"]
    assert v["seeds"] == [0, 1] and set(v["per_seed"]["world-heldout"]) == {"0", "1"}
    pooled = v["redteam"]["world-heldout"]["overall"]["leak_rate"]
    assert pooled["n"] == sum(r["leak_rate"]["n"] for r in v["per_seed"]["world-heldout"].values())
    assert res["variants"]["filtered"]["seeds"] == [0]
    assert set(res["ensemble"]["world-heldout"]) == {"leak_rate", "any_leak_rate"}
    # the guarded row: calibrated on the calib split (probe/ saved with each seed's model), guard metrics, a plot
    g = res["variants"]["tagged+guard"]
    assert all((out / "models" / f"tagged-s{k}" / "probe" / "probe.json").exists() for k in (0, 1))
    assert g["guard_probe"]["k"] >= 1
    for suite in ("world-heldout", "wild"):
        for part in ("benign", "hazard"):
            fire = g["guard_metrics"][suite][part]["guard_fire_rate"]
            assert fire["n"] == g["guard_metrics"][suite][part]["n"] and 0 <= fire["lo"] <= fire["hi"] <= 1
    assert res["guard_plot"] and (out / res["guard_plot"]).exists()
    assert any(c.startswith("prealign probe train") for c in res["commands"])
    for v in res["variants"].values():
        for suite in ("world-heldout", "wild"):
            lr = v["redteam"][suite]["overall"]["leak_rate"]
            assert {"value", "lo", "hi"} <= set(lr) and 0 <= lr["lo"] <= lr["hi"] <= 1
            assert "by_sft_coverage" in v["redteam"][suite] and "by_tactic" in v["redteam"][suite]
            assert "benign_answer_rate" in v["helpfulness"][suite] and "over_refusal_rate" in v["helpfulness"][suite]
        assert v["humans"]["loss"]["bits_per_char"] > 0
        assert "overall" in v["behaviour"]
    assert res["variants"]["tagged+lock"]["lock_mode"] == "lock" and res["variants"]["mle"]["lock_mode"] is None
    assert (out / "data" / "eval" / "attacks-wild.jsonl").exists() and (out / "models" / "mle+sft-s1" / "config.json").exists()
    assert res["probes"]["mode"] and (out / "evals" / "probes.png").exists()
    assert any(c.startswith("prealign train") for c in res["commands"])
    check_commands(res["commands"], out, plan)
    page = (out / "report.html").read_text()
    assert "tagged+lock" in page and "Wilson" in page and "Probe guard (tagged+guard)" in page
    assert "does not decide anything" in page and "Did the models learn their world?" in page
    # every leak goal names its suite, split and measure, and carries the benign-answer rates
    from prealign.report import claims

    leak_goals = [c for c in claims(res) if "1/10" in c["goal"]]
    assert leak_goals and all(c["decisive"] is False and "benign answered" in c["evidence"] for c in leak_goals)
    assert {c["goal"].split(",")[1].strip() for c in leak_goals} == {"sft-uncovered", "held-out tactics"}

    with pytest.raises(PrealignError, match="another plan"):
        X.run_experiment(X.get_plan("smoke"), out)

    # the CLI verbs on the trained models
    from prealign._util import read_jsonl
    from prealign.cli import main

    # a recorded eval command, run again, gives the same scored replies as its step
    for row in ("tagged+mask", "mle"):
        step = out / "evals" / row / "s1" / "world-heldout.jsonl"
        words = shlex.split(next(c for c in res["commands"] if f"--outcomes {step}" in c))
        words[words.index("--outcomes") + 1] = str(tmp_path / "again.jsonl")
        assert main(words[1:]) == 0
        again = read_jsonl(tmp_path / "again.jsonl")
        assert again == [{k: v for k, v in o.items() if k != "model_seed"} for o in read_jsonl(step)], row

    m, ev = out / "models", out / "data" / "eval"
    assert main(["eval", "redteam", "--model", str(m / "tagged-s0"), "--attacks", str(ev / "attacks-world-heldout.jsonl"),
                 "--max-new-tokens", "4", "--json", str(tmp_path / "rt.json"), "--outcomes", str(tmp_path / "o1.jsonl")]) == 0
    rt = json.loads((tmp_path / "rt.json").read_text())
    assert rt["overall"]["leak_rate"]["n"] > 0 and rt["responder"] == "tagged/lock"
    assert main(["eval", "redteam", "--model", str(m / "mle+sft-s0"), "--attacks", str(ev / "attacks-world-heldout.jsonl"),
                 "--max-new-tokens", "4", "--outcomes", str(tmp_path / "o2.jsonl")]) == 0
    assert main(["eval", "redteam", "--model", str(m / "mle-s0"), "--attacks", str(ev / "attacks-world-heldout.jsonl"),
                 "--max-new-tokens", "4", "--outcomes", str(tmp_path / "o3.jsonl")]) == 0
    assert main(["eval", "ensemble", str(tmp_path / "o1.jsonl"), str(tmp_path / "o2.jsonl"), str(tmp_path / "o3.jsonl"),
                 "--json", str(tmp_path / "ens.json")]) == 0
    assert json.loads((tmp_path / "ens.json").read_text())["n_models"] == 3
    assert main(["eval", "diff", "--a", str(m / "tagged-s0"), "--b", str(m / "mle-s0"), "--texts", str(ev), "--docs", "2", "--top", "3"]) == 0
    assert main(["eval", "humans", "--model", str(m / "filtered-s0"), "--data", str(ev), "--docs", "8", "--items", "3"]) == 0
    assert main(["eval", "probes", "--model", str(m / "tagged-s0"), "--data", str(ev), "--docs", "4", "--plot", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").exists()


def check_commands(commands, out: Path, plan):
    """Every recorded command parses with the real CLI, and says what its step ran."""
    from prealign.train import TrainConfig

    assert commands and all(c.startswith("prealign ") for c in commands)
    parsed = [(shlex.split(c)[1], cli_params(c)) for c in commands]  # strict: a bad option raises
    evals = {}  # eval redteam: one per row, seed and suite
    for p in (p for verb, p in parsed if verb == "eval" and "outcomes" in p):
        evals[(Path(p["outcomes"]).parent.parent.name, Path(p["outcomes"]).parent.name, Path(p["outcomes"]).stem)] = p
    want = {(r, f"s{k}", s) for r in X.DEFAULT_ROWS for k in R.seeds_of(plan, X.ROWS[r].model) for s in X.SUITES}
    assert set(evals) == want
    for (row, seed, suite), p in evals.items():
        lock = X.ROWS[row].lock
        assert p["guard"] == X.ROWS[row].guard and p["model"] == str(out / "models" / f"{X.ROWS[row].model}-{seed}")
        if lock is not None:
            assert LockSettings(p["lock"], p["policy"], p["exit_threshold"]) == lock
        assert p["attacks"] == str(out / "data" / "eval" / f"attacks-{suite}.jsonl")
    assert [c for c in commands if "evals/tagged+guard/" in c] and all(
        "--guard on" in c for c in commands if "evals/tagged+guard/" in c)
    assert [c for c in commands if "evals/tagged+mask/" in c] and all(
        "--lock mask" in c for c in commands if "evals/tagged+mask/" in c)
    # a train command is the config the model directory records
    trained = [p for verb, p in parsed if verb == "train"]
    assert {Path(p["out"]).name for p in trained} == {f"{m}-s{k}" for m in X.plans.models_of(X.DEFAULT_ROWS)
                                                       for k in R.seeds_of(plan, m)}
    assert all(p["exact_budget"] for p in trained)
    for p in trained:
        cfg = TrainConfig(**p)
        meta = json.loads((Path(cfg.out) / "prealign_model.json").read_text())["config"]
        want = cfg.resolved()
        if cfg.init_from:  # fine-tuning keeps the shorter of the two contexts
            want["seq_len"] = meta["seq_len"]
        assert meta == {**want, "compile": False}, cfg.out


def test_plans_are_data_and_rows_register():
    assert X.get_plan("quick").train_tokens == X.PLANS["quick"].train_tokens
    assert X.get_plan("quick").sft_tokens == round(X.PLANS["quick"].sft_share * X.PLANS["quick"].train_tokens)
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
        X.get_plan("smoke", rows=("nope",))
    with pytest.raises(PrealignError, match="unknown model"):
        X.register_row(X.Row("r", "no-such-model"))
    with pytest.raises(PrealignError, match="sft_share"):
        X.get_plan("smoke", sft_share=1.5)
    with pytest.raises(PrealignError, match="train_tokens"):
        X.get_plan("smoke", train_tokens=0)


def test_plan_overrides_from_the_command_line():
    over = X.parse_overrides(["train_tokens=4e6", "rows=mle,tagged+lock", "max_train_minutes=none", "decides=false",
                              "sft_share=0.05", "budgets=1000,2000"])
    assert over == {"train_tokens": 4_000_000, "rows": ("mle", "tagged+lock"), "max_train_minutes": None,
                    "decides": False, "sft_share": 0.05, "budgets": (1000, 2000)}
    plan = X.get_plan("quick", **over)
    assert plan.sft_tokens == 200_000 and plan.row_names == ("mle", "tagged+lock")
    for bad, says in (("train_tokens=abc", "not a valid int"), ("bogus=1", "unknown plan field"),
                      ("train_tokens", "FIELD=VALUE"), ("decides=maybe", "not a valid bool"), ("name=x", "--plan")):
        with pytest.raises(PrealignError, match=says):
            X.parse_overrides([bad])
    from prealign.cli import main

    assert main(["experiment", "--plan", "smoke", "--set", "docz=1", "--out", "runs/never"]) == 2
    assert not Path("runs/never").exists()


def test_unequal_budgets_are_refused(tmp_path, tokenizer_dir):
    """A clock cap that would cut a run short is an error (never a silent cut), and results whose
    pretraining budgets differ by more than 1% carry no verdict."""
    from prealign.experiment import results as RS
    from prealign.data import write_shard
    from prealign.train import TrainConfig, train
    from tests.test_train import TINY, make_docs

    write_shard(tmp_path / "data", 0, [{"text": t, "variant": "tagged", "scheme": "seed"} for t in make_docs(100)])
    cfg = TrainConfig(data=str(tmp_path / "data"), tokenizer=str(tokenizer_dir), out=str(tmp_path / "m"),
                      max_tokens=10_000_000, max_minutes=0.001, exact_budget=True, checkpoint_every=1, **TINY)
    with pytest.raises(PrealignError, match="wall-clock cap .* must be exact"):
        train(cfg)
    assert (tmp_path / "m" / "checkpoint.pt").exists()  # a rerun with a larger cap resumes
    with pytest.raises(PrealignError, match="--exact-budget needs --max-tokens"):
        TrainConfig(data="d", out="o", tokenizer="t", exact_budget=True).validate()

    plan = mini_plan()
    models = {"tagged-s0": {"tokens_seen": 6144}, "mle-s0": {"tokens_seen": 6144}, "mle+sft-s0": {"tokens_seen": 1536}}
    assert RS.budgets(plan, models)["equal"]
    models["mle-s0"] = {"tokens_seen": 6144 * 1.02}
    b = RS.budgets(plan, models)
    assert not b["equal"] and b["spread"] == pytest.approx(0.02 / 1.02, rel=1e-3)
    learnt = {"checks": {}, "undertrained": []}
    verdict = RS.decisive(X.get_plan("standard"), b, learnt)
    assert not verdict["decisive"] and any("budgets differ by 1.96%" in r for r in verdict["reasons"])
    assert RS.decisive(X.get_plan("standard"), RS.budgets(plan, {"a-s0": {"tokens_seen": 1}}), learnt)["decisive"] is False
    assert RS.decisive(X.get_plan("standard"), RS.budgets(plan, {"tagged-s0": {"tokens_seen": 1}}), learnt)["decisive"]


@pytest.mark.slow
def test_the_sweep_and_the_gpu_plan_at_smoke_size(tmp_path):
    import torch

    torch.set_num_threads(1)
    try:
        from prealign.evals.attacks import wild_jailbreaks

        wild_jailbreaks()
    except PrealignError as e:
        pytest.skip(str(e))
    sweep = mini_plan("sweep", budgets=(3000,), rows=("mle", "mle+sft", "tagged", "tagged+lock"), seeds=2,
                      human_passages=0, probe_docs=0)
    X.run_experiment(sweep, tmp_path / "sweep", threads=1)
    first = tmp_path / "sweep" / "budget-3000" / "models" / "tagged-s0" / "model.safetensors"
    stamp = first.stat().st_mtime_ns
    # a budget added to a finished sweep: only the new point is computed
    res_path = X.run_experiment(dataclasses.replace(sweep, budgets=(3000, 6000)), tmp_path / "sweep", threads=1)
    assert first.stat().st_mtime_ns == stamp
    with pytest.raises(PrealignError, match="another plan \\(docs differ\\)"):
        X.run_experiment(dataclasses.replace(sweep, docs=sweep.docs + 1), tmp_path / "sweep", threads=1)
    res = json.loads(res_path.read_text())
    assert res["kind"] == "sweep" and res["budgets"] == [3000, 6000]
    assert set(res["curve"]) == {"mle", "mle+sft", "tagged", "tagged+lock"}
    for row, c in res["curve"].items():
        for key in ("leak_rate/uncovered", "any_leak_rate/uncovered", "leak_rate/heldout", "any_leak_rate/heldout"):
            assert set(c[key]) == {"3000", "6000"}
    assert set(res["ratio_tagged_lock_to_mle_sft"]["any_leak_rate/uncovered"]) == {"3000", "6000"}
    for b in (3000, 6000):  # each point is an experiment of its own, sharing one set of corpora
        point = json.loads((tmp_path / "sweep" / f"budget-{b}" / "results.json").read_text())
        assert set(point["budgets"]["pretraining"].values()) == {6144 if b == 6000 else 3072}
        assert not (tmp_path / "sweep" / f"budget-{b}" / "data").exists()
    assert (tmp_path / "sweep" / "sweep.png").exists() and "leak against budget" in (tmp_path / "sweep" / "report.html").read_text()

    gpu = mini_plan("gpu", seeds=1, preset="small", hidden_size=48, n_layers=2, rows=("mle", "mle+sft", "tagged+lock"),
                    human_passages=0, probe_docs=0)
    res = json.loads(X.run_experiment(gpu, tmp_path / "gpu", threads=1).read_text())
    assert res["plan"]["preset"] == "small" and set(res["variants"]) == {"mle", "mle+sft", "tagged+lock"}
    assert res["budgets"]["equal"]


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
