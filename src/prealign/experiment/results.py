"""`results.json`: the step outputs of an experiment (or a sweep) gathered into one versioned
document, from which the report is a pure function.

Rates of a row pool the outcomes of every seed of its model (Wilson intervals on the pooled
counts); each seed's own figure is kept beside them, so a reader sees the spread between seeds.
Before any verdict the document records whether the comparison can decide anything: equal
pretraining budgets (within 1%), models that learnt their world (`experiment.diagnostics`), and
a plan meant to decide (the quick plan only demonstrates the pipeline).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from prealign._util import read_json, read_jsonl, run_meta
from prealign.experiment.plans import MODELS, ROWS, Plan

RESULTS_VERSION = 2
BUDGET_TOLERANCE = 0.01  # pretraining budgets must agree within 1% for any verdict
META_KEYS = ("variant", "n_params", "steps", "tokens_seen", "train_seconds", "tokens_per_s", "final_val_loss",
             "stop_reason", "seed", "data_hash", "init_from")


def _models(out: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for meta in sorted((out / "models").glob("*/prealign_model.json")):
        mm = read_json(meta)
        found[meta.parent.name] = {k: mm.get(k) for k in META_KEYS if k in mm}
    return found


def budgets(plan: Plan, models: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Tokens seen by every pretraining run and every fine-tuning run, and whether they agree."""
    pre = {n: m["tokens_seen"] for n, m in models.items() if MODELS.get(n.rsplit("-s", 1)[0]) and
           MODELS[n.rsplit("-s", 1)[0]].init_from is None}
    fine = {n: m["tokens_seen"] for n, m in models.items() if n not in pre}
    spread = (max(pre.values()) - min(pre.values())) / max(pre.values()) if pre else 0.0
    equal = bool(pre) and spread <= BUDGET_TOLERANCE  # no pretraining record: nothing to compare
    share = (sum(fine.values()) / len(fine)) / (sum(pre.values()) / len(pre)) if fine and pre else None
    return {"pretraining": pre, "finetuning": fine, "planned_pretraining": plan.train_tokens,
            "planned_finetuning": plan.sft_tokens, "sft_share_planned": plan.sft_share,
            "sft_share_seen": None if share is None else round(share, 5), "spread": round(spread, 5),
            "tolerance": BUDGET_TOLERANCE, "equal": equal}


def _row_results(evals: Path, name: str, humans: Mapping[str, Any]) -> dict[str, Any] | None:
    """A row's pooled figures over the seeds it has outcomes for (None: not evaluated yet)."""
    from prealign.evals.behaviour import behaviour_summary
    from prealign.evals.metrics import GUARD_METRICS, HELPFULNESS_METRICS, get_metric, summarise, summarise_by
    from prealign.evals.redteam import redteam_summary, transcripts

    seed_dirs = sorted((evals / name).glob("s*/"), key=lambda p: int(p.name[1:]) if p.name[1:].isdigit() else -1)
    seed_dirs = [d for d in seed_dirs if d.name[1:].isdigit() and any(d.glob("*.jsonl"))]
    if not seed_dirs:
        return None
    row = ROWS[name]
    suites = sorted({f.stem for d in seed_dirs for f in d.glob("*.jsonl")})
    res: dict[str, Any] = {"model": row.model, "lock_mode": row.lock.mode if row.lock else None, "guard": row.guard,
                           "seeds": [int(d.name[1:]) for d in seed_dirs], "redteam": {}, "helpfulness": {},
                           "per_seed": {}, "transcripts": {}, "humans": humans.get(row.model, {})}
    for s in suites:
        outcomes = [o for d in seed_dirs if (d / f"{s}.jsonl").exists() for o in read_jsonl(d / f"{s}.jsonl")]
        hazard = [o for o in outcomes if o["canaries"] and not o["authorised"]]
        res["redteam"][s] = redteam_summary(hazard)
        res["redteam"][s]["benign_any_leak"] = get_metric("any_leak_rate")([o for o in outcomes if not o["canaries"]]).to_dict()
        res["helpfulness"][s] = summarise(outcomes, HELPFULNESS_METRICS)
        res["helpfulness"][s]["by_task"] = summarise_by(outcomes, lambda o: o.get("task"), ("benign_answer_rate",))
        res["transcripts"][s] = transcripts(outcomes)
        res["per_seed"][s] = {str(k): {**summarise([o for o in hazard if o.get("model_seed") == k], ("leak_rate", "any_leak_rate")),
                                       **summarise([o for o in outcomes if o.get("model_seed") == k], HELPFULNESS_METRICS)}
                              for k in res["seeds"]}
        if s == "world-heldout":
            res["behaviour"] = behaviour_summary(outcomes)
        if row.guard == "on":
            res.setdefault("guard_metrics", {})[s] = {
                "benign": summarise([o for o in outcomes if not (o["canaries"] and not o["authorised"])], GUARD_METRICS),
                "hazard": summarise(hazard, GUARD_METRICS),
            }
    probe = seed_dirs[0] / "guard_probe.json"
    if probe.exists():
        res["guard_probe"] = read_json(probe)
    return res


def decisive(plan: Plan, budget: Mapping[str, Any], diagnostics: Mapping[str, Any] | None) -> dict[str, Any]:
    """Whether this experiment's comparisons can decide anything, and if not, why not."""
    from prealign.experiment.plans import MODELS as _MODELS

    reasons = []
    if not plan.decides:
        reasons.append(f"the {plan.name} plan demonstrates the pipeline and decides nothing (one seed, a small budget)")
    if not budget["equal"]:
        reasons.append(f"pretraining budgets differ by {100 * budget['spread']:.2f}% (> {100 * budget['tolerance']:.0f}%)")
    undertrained = list((diagnostics or {}).get("undertrained", []))
    for m in (m for m in undertrained if _MODELS.get(m) is not None and _MODELS[m].deciding):
        checks = [c for c in diagnostics["checks"].values() if c["model"] == m and c["learned"] is False]
        what = "; ".join(f"{c['what']}: {100 * (c['rate']['value'] or 0):.1f}% vs the corpus's {100 * c['corpus_rate']:.0f}%"
                         for c in checks)
        reasons.append(f"{m} is undertrained ({what})")
    if diagnostics is None:
        reasons.append("the diagnostics (did the models learn their world?) are missing")
    unlearnt = list((diagnostics or {}).get("unlearnt_languages", []))
    return {"decisive": not reasons, "reasons": reasons, "undertrained": undertrained, "unlearnt_languages": unlearnt}


def assemble_results(out: Path, plan: Plan, commands: Sequence[str], seconds: Mapping[str, float]) -> dict[str, Any]:
    """Gather the step outputs into the one results document the report reads."""
    evals = out / "evals"
    humans = {p.stem: read_json(p) for p in sorted((evals / "humans").glob("*.json"))} if (evals / "humans").exists() else {}
    variants = {}
    for r in plan.row_names:
        v = _row_results(evals, r, humans)
        if v is not None:
            variants[r] = v
    models = _models(out)
    budget = budgets(plan, models)
    diag = read_json(evals / "diagnostics.json") if (evals / "diagnostics.json").exists() else None
    return {
        "version": RESULTS_VERSION,
        "kind": "experiment",
        "plan": plan.to_dict(),
        "rows": list(plan.row_names),
        "variants": variants,
        "models": models,
        "budgets": budget,
        "diagnostics": diag,
        "verdict": decisive(plan, budget, diag),
        "probes": read_json(evals / "probes.json") if (evals / "probes.json").exists() else None,
        "probe_plot": "evals/probes.png" if (evals / "probes.png").exists() else None,
        "ensemble": read_json(evals / "ensemble.json") if (evals / "ensemble.json").exists() else None,
        "guard_plot": "evals/guard_readings.png" if (evals / "guard_readings.png").exists() else None,
        "guard_eval": read_json(evals / "guard_eval.json") if (evals / "guard_eval.json").exists() else None,
        "tamper": read_json(out / "tamper" / "results.json") if (out / "tamper" / "results.json").exists() else None,
        "commands": list(commands),
        "step_seconds": dict(seconds),
        "total_seconds": round(sum(seconds.values()), 1),
        "meta": run_meta(seed=plan.seed),
    }


# --- the sweep -----------------------------------------------------------------------------------------

SWEEP_MEASURES = (("leak_rate", "uncovered"), ("any_leak_rate", "uncovered"), ("leak_rate", "heldout"),
                  ("any_leak_rate", "heldout"))


def _point(v: Mapping[str, Any], suite: str, metric: str, split: str) -> dict[str, Any] | None:
    rt = (v.get("redteam") or {}).get(suite) or {}
    part = rt.get("by_sft_coverage", {}).get("uncovered") if split == "uncovered" else rt.get("by_tactic", {}).get("heldout")
    return (part or {}).get(metric)


def assemble_sweep(out: Path, plan: Plan, points: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """One results document for a sweep: per budget and row, each leak measure on the
    sft-uncovered split and under held-out tactics, the benign-answer rate, and the ratio
    `tagged+lock` / `mle+sft` against budget."""
    suite = "world-heldout"
    curve: dict[str, Any] = {}
    for b, res in sorted(points.items()):
        for row, v in res.get("variants", {}).items():
            c = curve.setdefault(row, {})
            for metric, split in SWEEP_MEASURES:
                c.setdefault(f"{metric}/{split}", {})[str(b)] = _point(v, suite, metric, split)
            help_ = (v.get("helpfulness") or {}).get(suite) or {}
            c.setdefault("benign_answer_rate", {})[str(b)] = help_.get("benign_answer_rate")
            c.setdefault("benign_by_task", {})[str(b)] = {k: r.get("benign_answer_rate") for k, r in (help_.get("by_task") or {}).items()}
    ratio: dict[str, Any] = {}
    for metric, split in SWEEP_MEASURES:
        key = f"{metric}/{split}"
        for b in sorted(points):
            a = ((curve.get("tagged+lock") or {}).get(key) or {}).get(str(b))
            m = ((curve.get("mle+sft") or {}).get(key) or {}).get(str(b))
            r = None
            if a and m and a.get("value") is not None and m.get("value"):
                r = round(a["value"] / m["value"], 4)
            ratio.setdefault(key, {})[str(b)] = r
    return {
        "version": RESULTS_VERSION,
        "kind": "sweep",
        "plan": plan.to_dict(),
        "suite": suite,
        "budgets": sorted(points),
        "rows": list(plan.row_names),
        "curve": curve,
        "ratio_tagged_lock_to_mle_sft": ratio,
        "points": {str(b): {"verdict": r.get("verdict"), "budgets": r.get("budgets"),
                            "diagnostics": (r.get("diagnostics") or {}).get("checks"),
                            "total_seconds": r.get("total_seconds")} for b, r in sorted(points.items())},
        "total_seconds": round(sum(r.get("total_seconds") or 0 for r in points.values()), 1),
        "meta": run_meta(seed=plan.seed),
    }
