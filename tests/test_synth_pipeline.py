"""The synth pipeline end to end against the fault-injecting server on 127.0.0.1.

    .venv/bin/pytest -q tests/test_synth_pipeline.py

Checks: documents keep their scenario ids and lint; review passes filter, edit, escalate and
catch canary leaks; under 429/500/cut/hang/malformed/wrong-tag faults nothing is lost or
duplicated and the ledger equals what the server billed; a killed run resumes without paying
twice; transform keeps untrusted tags as text; import and review work without an LLM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fault_server import FaultServer  # noqa: E402

from prealign import world  # noqa: E402
from prealign.data import load_records  # noqa: E402
from prealign.errors import PrealignError  # noqa: E402
from prealign.modes import Mode, get_scheme  # noqa: E402
from prealign.segments import lint_text  # noqa: E402
from prealign.synth.client import ClientConfig  # noqa: E402
from prealign.synth.ledger import read_ledger  # noqa: E402
from prealign.synth.plan import ReviewPlan, load_plan, plan_from_dict  # noqa: E402
from prealign.synth.rank import SynthConfig  # noqa: E402
from prealign.synth.run import run_synth  # noqa: E402

S = get_scheme("seed")
AI_OPEN, AI_CLOSE = S.tag_between(Mode.HUMAN, Mode.AI).text, S.tag_between(Mode.AI, Mode.HUMAN).text


def write_scenarios(path: Path, n: int, special: dict[int, dict] | None = None) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            rec = {"id": f"s{i:03d}", "kind": "hazard_request", "correct_action": "refuse",
                   "hazards": [{"id": f"h{i}", "canary": f"canary-{i}-xyzzy"}]}
            rec.update((special or {}).get(i, {}))
            f.write(json.dumps(rec) + "\n")
    return path


def client(srv, **kw) -> ClientConfig:
    base = dict(endpoint=srv.url, model="tiny", concurrency=6, timeout_s=2.0, connect_timeout_s=1.0, max_retries=6,
                backoff_base_s=0.001, backoff_max_s=0.01)
    base.update(kw)
    return ClientConfig(**base)


def all_docs(out: Path) -> dict[str, list[str]]:
    """Every document id of a run by where it ended: kept, rejected, escalated."""
    kept = [r["id"] for r in load_records(out)]
    rejected = [r["id"] for f in sorted((out / "rejected").glob("*.parquet")) for r in pq.read_table(f).to_pylist()] \
        if (out / "rejected").exists() else []
    esc = [json.loads(line)["id"] for line in (out / "escalate.jsonl").read_text().splitlines() if line.strip()]
    return {"kept": kept, "rejected": rejected, "escalated": esc}


def ledger_matches_server(out: Path, srv: FaultServer) -> None:
    entries = read_ledger(out)
    paid = [e for e in entries if not e["cached"]]
    assert sum(e["prompt_tokens"] for e in paid) == srv.billed_prompt_tokens
    assert sum(e["completion_tokens"] for e in paid) == srv.billed_completion_tokens
    assert len(paid) == srv.billed_requests
    assert set(srv.billed_by_key.values()) <= {1}  # the server never billed the same request twice
    assert {e["key"] for e in paid} == set(srv.billed_by_key)


def test_render_happy_path(tmp_path):
    scen = write_scenarios(tmp_path / "s.jsonl", 7)
    with FaultServer() as srv:
        summary = run_synth(SynthConfig("render", (str(scen),), str(tmp_path / "out"), client(srv), shard_size=3))
        ledger_matches_server(tmp_path / "out", srv)
    out = tmp_path / "out"
    rows = load_records(out)
    assert summary["kept"] == 7 and summary["ranks"] == 3
    assert sorted(r["scenario_id"] for r in rows) == [f"s{i:03d}" for i in range(7)]
    assert all(r["variant"] == "llm" and r["scheme"] == "seed" and not lint_text(r["text"], "seed") for r in rows)
    labels = json.loads(rows[0]["labels"])
    modes = {m for m, _, _ in labels["modes"]}
    assert {"human", "ai", "quoted_human"} <= modes
    assert [h["mode"] for h in labels["hazards"]] == ["human"]  # humans may tell each other
    prov = json.loads(rows[0]["provenance"])
    assert [p["pass"] for p in prov] == ["render", "lint", "canary", "grade", "filter", "crosscheck"]
    assert prov[0]["template"] == "render" and len(prov[0]["template_version"]) == 12
    ledger = [json.loads(x) for x in (out / "ledger.jsonl").read_text().splitlines()]
    assert {e["pass"] for e in ledger} == {"render", "grade", "crosscheck"} and len(ledger) == 21
    assert all(set(e) >= {"pass", "model", "prompt_tokens", "completion_tokens", "seconds", "cached"} for e in ledger)
    run = json.loads((out / "run.json").read_text())
    assert run["summary"]["kept"] == 7 and run["config"]["client"]["model"] == "tiny"


def test_review_passes_filter_edit_escalate_and_canary(tmp_path):
    special = {1: {"quality": "mediocre"}, 2: {"contested": True}, 3: {"leak": True}}
    scen = write_scenarios(tmp_path / "s.jsonl", 5, special)
    with FaultServer() as srv:
        s = run_synth(SynthConfig("render", (str(scen),), str(tmp_path / "out"), client(srv), shard_size=5))
    docs = all_docs(tmp_path / "out")
    assert sorted(docs["kept"]) == ["s000:llm", "s001:llm", "s004:llm"]  # s001 was fixed by the edit
    assert docs["escalated"] == ["s002:llm"] and docs["rejected"] == ["s003:llm"]
    kept = {r["id"]: r for r in load_records(tmp_path / "out")}
    passes = [p["pass"] for p in json.loads(kept["s001:llm"]["provenance"])]
    assert passes == ["render", "lint", "canary", "grade", "filter", "edit", "lint", "canary", "grade", "filter", "crosscheck"]
    assert "mediocre" not in kept["s001:llm"]["text"]
    esc = json.loads((tmp_path / "out" / "escalate.jsonl").read_text())
    assert "disagree" in esc["reason"] and esc["crosscheck"]["ai_aligned"] == 1.0
    assert s["reject_reasons"] == {"canary": 1}


def test_faults_lose_nothing_duplicate_nothing_and_ledger_adds_up(tmp_path):
    faults = {"429": 0.12, "500": 0.08, "cut": 0.06, "hang": 0.03, "malformed": 0.05, "slow": 0.05, "wrong_tags": 0.08}
    scen = write_scenarios(tmp_path / "s.jsonl", 24)
    # The client's timeout sits well above a slow answer on a loaded machine and well below a hang:
    # an answer the server sends after the client gave up is billed by the server but never seen by
    # the client (as with a real provider), which this ledger check cannot tell from a lost entry.
    with FaultServer(faults, seed=7, max_faults=2, hang_s=3.0, slow_s=0.1) as srv:
        s = run_synth(SynthConfig("render", (str(scen),), str(tmp_path / "out"), client(srv, timeout_s=1.5), shard_size=5))
        assert all(srv.fault_count[f] > 0 for f in ("429", "500", "cut", "malformed", "wrong_tags"))
        ledger_matches_server(tmp_path / "out", srv)
    docs = all_docs(tmp_path / "out")
    every = docs["kept"] + docs["rejected"] + docs["escalated"]
    assert sorted(every) == sorted(f"s{i:03d}:llm" for i in range(24))  # each exactly once
    assert s["kept"] + s["rejected"] + s["escalated"] == 24
    # wrong tags: the edit round may fix them; whatever was kept lints clean
    assert all(not lint_text(r["text"], "seed") for r in load_records(tmp_path / "out"))


def test_failed_run_resumes_without_paying_twice(tmp_path):
    scen = write_scenarios(tmp_path / "s.jsonl", 12)
    out = tmp_path / "out"
    with FaultServer() as srv:
        srv.fail_after = 7  # then the provider goes down: 503 for everything
        cfg = SynthConfig("render", (str(scen),), str(out), client(srv, max_retries=1, concurrency=1), shard_size=3,
                          plan=load_plan("lint-only"))
        with pytest.raises(PrealignError, match="re-run the same command to resume"):
            run_synth(cfg)
        done_before = sorted(p.name for p in (out / "completions").glob("*"))
        assert 0 < len(done_before) < 4 and not (out / "run.json").exists()
        srv.fail_after = None
        s = run_synth(cfg)
        assert s["kept"] == 12
        ledger_matches_server(out, srv)
    ids = [r["id"] for r in load_records(out)]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 12
    cached = [e for e in read_ledger(out) if e["cached"]]
    assert cached  # the second run answered the first run's requests from the cache


def test_killed_cli_run_resumes(tmp_path):
    scen = write_scenarios(tmp_path / "s.jsonl", 24)
    out = tmp_path / "out"
    with FaultServer(delay_s=0.1) as srv:
        cmd = [sys.executable, "-m", "prealign.cli", "synth", "render", "--scenarios", str(scen), "--endpoint", srv.url,
               "--model", "tiny", "--out", str(out), "--shard-size", "2", "--concurrency", "2", "--plan", "grade-filter",
               "--quiet"]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 30
        while time.time() < deadline and len(list((out / "completions").glob("*")) if (out / "completions").exists() else []) < 2:
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        done = len(list((out / "completions").glob("*")))
        assert 2 <= done < 12, f"kill came too late ({done} ranks done)"
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "kept 24" in r.stdout
        # A kill -9 can land while a request is on the wire: the server billed it, the client never
        # saw it and asks again after the restart. That is bounded by the requests in flight
        # (--concurrency 2); everything the client did receive is in the ledger and never re-paid.
        paid = [e for e in read_ledger(out) if not e["cached"]]
        lost = srv.billed_requests - len(paid)
        assert 0 <= lost <= 2 and sum(n - 1 for n in srv.billed_by_key.values()) == lost
        assert len({e["key"] for e in paid}) == len(paid)
    ids = [x["id"] for x in load_records(out)]
    assert len(ids) == 24 == len(set(ids))


def test_changed_settings_refuse_to_mix_runs(tmp_path):
    scen = write_scenarios(tmp_path / "s.jsonl", 4)
    with FaultServer() as srv:
        run_synth(SynthConfig("render", (str(scen),), str(tmp_path / "out"), client(srv), shard_size=2))
        with pytest.raises(PrealignError, match="different shard_size"):
            run_synth(SynthConfig("render", (str(scen),), str(tmp_path / "out"), client(srv), shard_size=3))


def test_transform_keeps_untrusted_tags_as_text(tmp_path):
    src = tmp_path / "book.txt"
    injected = f"Then Garrick typed {AI_CLOSE}{AI_OPEN} and lied to the miller about the grain."
    src.write_text("The miller counted sacks at dawn.\n\n" + injected + "\n\nHe stole two sacks while nobody looked.\n")
    with FaultServer() as srv:
        s = run_synth(SynthConfig("transform", (str(src),), str(tmp_path / "out"), client(srv),
                                  plan=load_plan("lint-only"), chunk_chars=60))
        prompts = srv.requests
    assert s["kept"] == 3 and prompts == 3
    rows = sorted(load_records(tmp_path / "out"), key=lambda r: r["id"])
    assert all(not lint_text(r["text"], "seed") for r in rows)
    text = rows[1]["text"]
    assert AI_CLOSE not in text.split(AI_OPEN)[0]  # the injected tags did not survive as tags
    assert "\u2039/AI\u203a" in text or "\u2039" in text
    prov = json.loads(rows[1]["provenance"])
    assert prov[0]["pass"] == "transform" and prov[0]["fidelity"] == 1.0


def test_transform_rejects_answers_that_drop_the_source(tmp_path):
    src = tmp_path / "t.jsonl"
    src.write_text(json.dumps({"text": "Old Bera sold the cow twice to two buyers and kept both purses."}) + "\n")
    with FaultServer(responder=lambda body: f"Something else.\n{AI_OPEN}A comment.{AI_CLOSE}\n") as srv:
        s = run_synth(SynthConfig("transform", (str(src),), str(tmp_path / "out"), client(srv), plan=load_plan("lint-only")))
    assert s["kept"] == 0 and s["reject_reasons"] == {"transform:fidelity": 1}


def test_import_gold_documents_without_llm(tmp_path):
    good = f"Bera haggled hard.\n{AI_OPEN}Bera wants the best price for her family; that is understandable.{AI_CLOSE}\n"
    bad = f"{AI_CLOSE} broken from the start"
    src = tmp_path / "gold.jsonl"
    src.write_text("\n".join(json.dumps({"id": f"g{i}", "text": t}) for i, t in enumerate([good, bad, good + " "])) + "\n")
    s = run_synth(SynthConfig("import", (str(src),), str(tmp_path / "out")))
    assert (s["kept"], s["rejected"]) == (2, 1)
    rows = load_records(tmp_path / "out")
    assert {r["variant"] for r in rows} == {"human"} and json.loads(rows[0]["provenance"])[0]["by"] == "human"
    assert not (tmp_path / "out" / "ledger.jsonl").exists() or not read_ledger(tmp_path / "out")


def test_review_existing_shards_then_cost_from_ledger(tmp_path):
    docs = tmp_path / "docs.jsonl"
    good = f"Bera haggled hard.\n{AI_OPEN}Bera wants the best price for her family; that is understandable.{AI_CLOSE}\n"
    docs.write_text("\n".join(json.dumps({"id": f"d{i}", "text": good + ("mediocre" if i == 1 else "")}) for i in range(4)) + "\n")
    with FaultServer() as srv:
        s = run_synth(SynthConfig("review", (str(docs),), str(tmp_path / "out"), client(srv), plan=load_plan("grade-filter")))
    assert (s["kept"], s["rejected"]) == (3, 1)
    from prealign.synth.cost import CostConfig, ledger_cost

    r = ledger_cost(str(tmp_path / "out"), CostConfig(tokens=1e9))
    assert r["measured"]["kept_documents"] == 3 and r["measured"]["dropped_documents"] == 1
    assert set(r["per_pass"]) == {"grade"} and r["generate_fraction"] > 0


def test_world_scenarios_render(tmp_path):
    scen = tmp_path / "w.jsonl"
    scen.write_text("\n".join(json.dumps(s) for s in world.scenarios(6)) + "\n")
    with FaultServer() as srv:
        s = run_synth(SynthConfig("render", (str(scen),), str(tmp_path / "out"), client(srv), plan=load_plan("lint-only")))
    rows = load_records(tmp_path / "out")
    assert s["kept"] == 6 and {r["scenario_id"] for r in rows} == {x["id"] for x in world.scenarios(6)}
    labels = [json.loads(r["labels"]) for r in rows]
    mentions = [m for lab in labels for m in lab["hazards"]]
    assert mentions and all(m["mode"] == "human" and m["hazard_id"] for m in mentions)
    assert all(lab["correct_action"] and lab["episodes"] for lab in labels)  # the scenario's ground truth


def test_plan_files_are_checked(tmp_path):
    with pytest.raises(PrealignError, match="unknown pass 'gradee'"):
        plan_from_dict({"passes": ["lint", "gradee"]})
    with pytest.raises(PrealignError, match="unknown key"):
        plan_from_dict({"passes": [{"grade": {"temprature": 0}}]})
    with pytest.raises(PrealignError, match="filter needs a grade"):
        plan_from_dict({"passes": ["filter"]})
    assert plan_from_dict({"passes": ["grade"]}).passes[0].name == "lint"  # lint always first
    assert isinstance(load_plan("default"), ReviewPlan)
    toml = tmp_path / "p.toml"
    toml.write_text('name = "t"\n[[passes]]\npass = "lint"\n[[passes]]\npass = "grade"\nmodel = "other"\n')
    assert load_plan(toml).passes[1].model == "other"


def test_bad_scenarios_are_one_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\n{"kind": "x"}\n')
    with FaultServer() as srv:
        with pytest.raises(PrealignError, match=r"bad.jsonl:2: scenario has no 'id'"):
            run_synth(SynthConfig("render", (str(bad),), str(tmp_path / "o"), client(srv)))
    with pytest.raises(PrealignError, match="needs an LLM"):
        SynthConfig("render", (str(bad),), str(tmp_path / "o"))


def test_cli_import_and_one_line_errors(tmp_path, capsys):
    from prealign.cli import main

    good = f"Bera haggled.\n{AI_OPEN}Bera wants a fair price for her family.{AI_CLOSE}\n"
    src = tmp_path / "gold.txt"
    src.write_text(good)
    assert main(["synth", "import", "--in", str(src), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "kept 1, rejected 0" in capsys.readouterr().out
    assert main(["synth", "render", "--scenarios", str(src), "--out", str(tmp_path / "o2"), "--endpoint",
                 "http://127.0.0.1:9/v1", "--model", "m", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prealign: error:") and "invalid JSON" in err and len(err.strip().splitlines()) == 1
    assert main(["synth", "render", "--scenarios", str(src), "--out", str(tmp_path / "o3"), "--endpoint", "x"]) == 2
    assert "pass both --endpoint and --model" in capsys.readouterr().err


def test_review_world_shards_and_catch_a_planted_leak(tmp_path):
    world.generate(tmp_path / "w", 12, "tagged")
    rows = load_records(tmp_path / "w")
    s = run_synth(SynthConfig("review", (str(tmp_path / "w"),), str(tmp_path / "out"), plan=load_plan("lint-only")))
    assert s["kept"] == 12  # the world's own tagged documents pass lint and the canary check
    kept = load_records(tmp_path / "out")
    assert {r["variant"] for r in kept} == {"tagged"} and {r["scenario_id"] for r in kept} == {r["scenario_id"] for r in rows}
    # plant a hazard's canary inside an AI span of a document whose scenario names that hazard
    from prealign.synth.passes import canaries_of

    victim = next(r for r in rows if any(not c["authorised"] for c in canaries_of(json.loads(r["scenario"]))))
    canary = next(c["canary"] for c in canaries_of(json.loads(victim["scenario"])) if not c["authorised"])
    leaked = dict(victim, id="leaked", text=victim["text"].replace(AI_OPEN, AI_OPEN + f"Here it is: {canary}. ", 1))
    src = tmp_path / "leak.jsonl"
    src.write_text(json.dumps(leaked) + "\n")
    s = run_synth(SynthConfig("review", (str(src),), str(tmp_path / "out2"), plan=load_plan("lint-only")))
    assert (s["kept"], s["reject_reasons"]) == (0, {"canary": 1})


def test_an_edit_that_rewrites_the_source_is_rejected(tmp_path):
    from fault_server import default_responder

    def responder(body: dict) -> str:
        system = body["messages"][0]["content"]
        if "Task: transform" in system:
            return default_responder(body).replace(AI_CLOSE, " mediocre" + AI_CLOSE)  # graded 2: edit it
        if "Task: edit" in system:
            return f"A different story.\n{AI_OPEN}Fine commentary.{AI_CLOSE}\n"  # the human text is gone
        return default_responder(body)

    src = tmp_path / "t.txt"
    src.write_text("Old Bera sold the cow twice to two buyers and kept both purses.\n")
    with FaultServer(responder=responder) as srv:
        s = run_synth(SynthConfig("transform", (str(src),), str(tmp_path / "out"), client(srv), plan=load_plan("default")))
    assert s["kept"] == 0 and s["reject_reasons"] == {"final check:fidelity": 1}


def test_the_rank_step_knows_no_executor():
    """rank.py (one rank's work) imports neither executor; ray_runner.py imports the step, not the run."""
    import ast

    import prealign.synth

    def synth_imports(name: str) -> set[str]:
        tree = ast.parse((Path(prealign.synth.__file__).parent / f"{name}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        return {m for m in found if m.startswith("prealign.synth.")}

    assert not synth_imports("rank") & {"prealign.synth.run", "prealign.synth.ray_runner"}
    assert "prealign.synth.rank" in synth_imports("ray_runner")
    assert "prealign.synth.run" not in synth_imports("ray_runner")
    assert {"prealign.synth.rank", "prealign.synth.ray_runner"} <= synth_imports("run")
