"""The experiment: corpora → tokenizer → every baseline trained with the same budget → every
evaluation → `results.json` → one HTML report. Resumable step by step.

    prealign experiment --plan quick --out runs/demo        # ≤ 20 minutes on 2 CPU cores
    prealign experiment --plan smoke --out /tmp/smoke       # a minute or two (tests)
    prealign experiment --plan full --out runs/full

Layout of DIR:
    data/<variant>/            world corpora (tagged, mle, filtered, sft), Parquet shards
    data/eval/                 the eval split (tagged documents) and the attack files per suite
    data/eval-mle/             the same eval scenarios rendered as mle (for the human-text check)
    tokenizer/                 one BPE tokenizer (trained on tagged + mle text) shared by all models
    models/<variant>/          HF directories: tagged, mle, filtered, mle+sft (mle fine-tuned on sft)
    evals/<row>/<suite>.jsonl  every scored reply; evals/<row>/summary.json its figures
    evals/humans/<model>.json, evals/probes.json, evals/probes.png
    steps/<step>.json          one marker per finished step (with its seconds): a rerun skips it
    results.json, report.html  the results and the report (a pure function of results.json)

Rows of the result table: `mle`, `filtered`, `mle+sft` (plain chat prompts), `tagged` (no lock),
`tagged+mask` (mask only), `tagged+lock` (mask + mode-confusion exit), `tagged+guard` (the lock plus
issue 12's probe guard, calibrated on the world's calib split). More rows plug in with
`register_row(Row(name, model, lock_mode, guard=...))`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from prealign._util import atomic_path, read_json, run_meta, write_json
from prealign.errors import PrealignError

Log = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """Every number of a plan: corpus sizes, the training budget, eval sizes. Data, not code."""

    name: str
    docs: int  # pretraining documents per variant corpus (tagged, mle, filtered)
    sft_docs: int  # aligned chat dialogues for mle+sft
    eval_docs: int  # tagged eval-split documents (human text, probes)
    vocab_size: int
    train_tokens: int  # the budget of every pretraining run (the same for all)
    train_minutes: float  # wall-clock cap of each pretraining run (a safety net)
    sft_tokens: int  # the fine-tuning budget of mle+sft (post-training is small)
    sft_minutes: float
    n_heldout: int  # world-heldout attacks (hazard requests and behaviour items)
    n_wild: int  # wild jailbreak attacks
    samples: int = 1
    max_new_tokens: int = 96
    temperature: float = 1.0
    max_prompt_chars: int = 600  # every attack's text is cut to this (keeping the request) for all models
    human_passages: int = 150
    human_items: int = 100
    probe_docs: int = 80
    preset: str = "tiny"
    seq_len: int | None = None  # None: the preset's
    hidden_size: int | None = None  # None: the preset's (tests shrink the model)
    n_layers: int | None = None
    scheme: str = "seed"
    seed: int = 0
    ensemble_seeds: int = 0  # extra tagged seeds for the ensemble check (0: skip)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PLANS: dict[str, Plan] = {
    "smoke": Plan("smoke", docs=300, sft_docs=100, eval_docs=40, vocab_size=512, train_tokens=60_000,
                  train_minutes=0.5, sft_tokens=10_000, sft_minutes=0.2, n_heldout=24, n_wild=8,
                  max_new_tokens=24, human_passages=20, human_items=10, probe_docs=12, seq_len=128,
                  max_prompt_chars=300),
    # quick: measured on 2 dedicated cores at ~10k tokens/s: ~4 min per pretraining, ~15 min in all
    "quick": Plan("quick", docs=8000, sft_docs=2000, eval_docs=400, vocab_size=2048, train_tokens=2_400_000,
                  train_minutes=5.0, sft_tokens=240_000, sft_minutes=1.0, n_heldout=300, n_wild=160),
    "full": Plan("full", docs=40000, sft_docs=8000, eval_docs=1000, vocab_size=4096, train_tokens=6_500_000,
                 train_minutes=12.0, sft_tokens=650_000, sft_minutes=2.0, n_heldout=600, n_wild=400, samples=2,
                 human_passages=400, human_items=300, probe_docs=200, ensemble_seeds=2),
}


def get_plan(name: str, **overrides: Any) -> Plan:
    try:
        plan = PLANS[name]
    except KeyError:
        raise PrealignError(f"unknown plan {name!r}; choose one of: {', '.join(PLANS)}") from None
    if overrides:
        known = {f.name for f in dataclasses.fields(Plan)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise PrealignError(f"unknown plan field(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        plan = dataclasses.replace(plan, **overrides)
    return plan


# --- rows of the result table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One row: which trained model, and how it generates (`lock_mode` None for plain models).

    `guard(model_dir)` returns an exit signal for `generate_locked_batch(guard=...)` (issue 12).
    """

    name: str
    model: str
    lock_mode: str | None = None
    guard: Callable[[Path], Any] | None = None


ROWS: dict[str, Row] = {}


def register_row(row: Row) -> None:
    """Add a row to the experiment (e.g. `tagged+guard`); it runs when a plan's rows name it."""
    ROWS[row.name] = row


for _r in (Row("mle", "mle"), Row("filtered", "filtered"), Row("mle+sft", "mle+sft"),
           Row("tagged", "tagged", "none"), Row("tagged+mask", "tagged", "mask"), Row("tagged+lock", "tagged", "lock")):
    register_row(_r)


def _probe_guard(model_dir: Path):
    """Issue 12's guard for a row: calibrated on the world's calib split the first time (saved as
    `probe/` in the model directory), then loaded."""
    from prealign.probes import guard_for

    return guard_for(model_dir)


register_row(Row("tagged+guard", "tagged", "lock", guard=_probe_guard))
DEFAULT_ROWS = ("mle", "filtered", "mle+sft", "tagged", "tagged+mask", "tagged+lock", "tagged+guard")
MODELS = ("tagged", "mle", "filtered", "mle+sft")
CORPORA = ("tagged", "mle", "filtered", "sft")
SUITES = ("world-heldout", "wild")


# --- steps -----------------------------------------------------------------------------------------


class Steps:
    """Markers in DIR/steps/: a step runs once; its marker is written only after its outputs."""

    def __init__(self, out: Path, log: Log):
        self.dir = out / "steps"
        self.log = log

    def done(self, name: str) -> bool:
        return (self.dir / f"{_safe(name)}.json").exists()

    def run(self, name: str, fn: Callable[[], Any]) -> None:
        if self.done(name):
            self.log(f"✓ {name} (done earlier)")
            return
        self.log(f"→ {name}")
        t0 = time.time()
        fn()
        secs = time.time() - t0
        write_json(self.dir / f"{_safe(name)}.json", {"step": name, "seconds": round(secs, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        self.log(f"  {name}: {secs:.1f}s")

    def seconds(self) -> dict[str, float]:
        if not self.dir.exists():
            return {}
        return {read_json(p)["step"]: read_json(p)["seconds"] for p in sorted(self.dir.glob("*.json"))}


def _safe(name: str) -> str:
    return name.replace("/", "__").replace("+", "_plus_")


def _texts(path: Path, limit: int | None = None) -> list[str]:
    from prealign.data import iter_texts, shard_files

    out = []
    for f in shard_files(path):
        for _, t in iter_texts(f):
            out.append(t)
            if limit is not None and len(out) >= limit:
                return out
    return out


def _write_jsonl(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        with tmp.open("w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    from prealign._util import iter_jsonl

    return [r for _, r in iter_jsonl(path)]


# --- the experiment ----------------------------------------------------------------------------------


def run_experiment(plan: Plan | str, out: str | os.PathLike, rows: Sequence[str] | None = None,
                   log: Log | None = None, threads: int | None = None) -> Path:
    """Run (or resume) the whole experiment into `out`; returns the path of `results.json`."""
    plan = get_plan(plan) if isinstance(plan, str) else plan
    rows = tuple(rows or DEFAULT_ROWS)
    for r in rows:
        if r not in ROWS:
            raise PrealignError(f"unknown row {r!r}; registered rows: {', '.join(ROWS)}")
    out = Path(out)
    log = log or (lambda s: None)
    out.mkdir(parents=True, exist_ok=True)
    plan_file = out / "plan.json"
    if plan_file.exists():
        old = read_json(plan_file)
        if old.get("plan") != plan.to_dict():
            raise PrealignError(f"{out}: holds an experiment with another plan ({old.get('plan', {}).get('name')}); use another --out")
    else:
        write_json(plan_file, {"plan": plan.to_dict(), "rows": list(rows), **run_meta(seed=plan.seed)})
    if threads:
        import torch

        torch.set_num_threads(threads)
    steps = Steps(out, log)
    commands: list[str] = []
    data, models, evals = out / "data", out / "models", out / "evals"

    # 1. corpora (same scenarios for every variant), the eval split, the attack files
    for v in CORPORA:
        n = plan.sft_docs if v == "sft" else plan.docs
        commands.append(f"prealign world --out {data / v} --docs {n} --variant {v} --scheme {plan.scheme} --seed {plan.seed} --split train")
        steps.run(f"corpus/{v}", lambda v=v, n=n: _world_generate(data / v, n, v, plan.scheme, plan.seed, "train"))
    commands.append(f"prealign world --out {data / 'eval'} --docs {plan.eval_docs} --variant tagged --scheme {plan.scheme} --seed {plan.seed} --split eval")
    steps.run("corpus/eval", lambda: _world_generate(data / "eval", plan.eval_docs, "tagged", plan.scheme, plan.seed, "eval"))
    commands.append(f"prealign world --out {data / 'eval-mle'} --docs {plan.eval_docs} --variant mle --seed {plan.seed} --split eval")
    steps.run("corpus/eval-mle", lambda: _world_generate(data / "eval-mle", plan.eval_docs, "mle", plan.scheme, plan.seed, "eval"))
    steps.run("attacks", lambda: _write_attack_files(plan, data / "eval"))

    # 2. one tokenizer for all
    commands.append(f"prealign tokenizer train --data {data / 'tagged'} {data / 'mle'} --out {out / 'tokenizer'} --vocab-size {plan.vocab_size}")
    steps.run("tokenizer", lambda: _train_tokenizer(plan, data, out / "tokenizer"))

    # 3. models: the same token budget for every pretraining run; mle+sft fine-tunes mle
    for v in ("tagged", "mle", "filtered"):
        commands.append(f"prealign train --data {data / v} --tokenizer {out / 'tokenizer'} --preset {plan.preset} --variant {v} "
                        f"--max-tokens {plan.train_tokens} --max-minutes {plan.train_minutes} --seed {plan.seed} --out {models / v}")
        steps.run(f"train/{v}", lambda v=v: _train(plan, data / v, models / v, v, out / "tokenizer", None, plan.train_tokens, plan.train_minutes, plan.seed))
    commands.append(f"prealign train --data {data / 'sft'} --init-from {models / 'mle'} --variant sft "
                    f"--max-tokens {plan.sft_tokens} --max-minutes {plan.sft_minutes} --seed {plan.seed} --out {models / 'mle+sft'}")
    steps.run("train/mle+sft", lambda: _train(plan, data / "sft", models / "mle+sft", "sft", None, models / "mle", plan.sft_tokens, plan.sft_minutes, plan.seed))
    for s in range(1, plan.ensemble_seeds + 1):
        name = f"tagged-seed{s}"
        steps.run(f"train/{name}", lambda name=name, s=s: _train(plan, data / "tagged", models / name, "tagged", out / "tokenizer", None, plan.train_tokens, plan.train_minutes, plan.seed + s))

    # 4. evaluations (a guarded row first calibrates its probe on the calib split, never on eval)
    attack_files = {s: data / "eval" / f"attacks-{s}.jsonl" for s in SUITES}
    for r in rows:  # building a row's guard calibrates it (a step of its own: timed, resumable)
        if ROWS[r].guard:
            commands.append(f"prealign probe train --model {models / ROWS[r].model}")
            steps.run(f"guard/{r}", lambda row=ROWS[r]: row.guard(models / row.model))
    for r in rows:
        row = ROWS[r]
        for s in SUITES:
            commands.append(f"prealign eval redteam --model {models / row.model} --attacks {attack_files[s]} "
                            f"--lock {row.lock_mode or 'none'} --samples {plan.samples} --seed {plan.seed} --json {evals / r / (s + '.json')}")
        steps.run(f"eval/{r}", lambda row=row: _eval_row(plan, row, models, attack_files, evals / row.name))
    eval_texts = lambda n: _texts(data / "eval", n)  # noqa: E731
    for m in MODELS:
        commands.append(f"prealign eval humans --model {models / m} --data {data / 'eval'} --also-in {data / 'eval-mle'}")
        steps.run(f"humans/{m}", lambda m=m: write_json(evals / "humans" / f"{m}.json",
                                                        _humans(plan, models / m, eval_texts(plan.eval_docs), _texts(data / "eval-mle"))))
    commands.append(f"prealign eval probes --model {models / 'tagged'} --data {data / 'eval'} --plot {evals / 'probes.png'}")
    steps.run("probes", lambda: _probes(plan, models / "tagged", eval_texts(plan.probe_docs), evals))
    if plan.ensemble_seeds:
        steps.run("ensemble", lambda: _ensemble(plan, models, attack_files, evals))
    if "tagged+guard" in rows and "tagged+lock" in rows:
        steps.run("guard/plot", lambda: _guard_plot(models / "tagged", evals / "tagged+lock" / "world-heldout.jsonl",
                                                    evals / "guard_readings.png"))

    # 5. results and report (always rebuilt: cheap, and a pure function of the step outputs)
    results = assemble_results(out, plan, rows, commands, steps.seconds())
    write_json(out / "results.json", results)
    from prealign.report import write_report

    write_report(out / "results.json", out / "report.html")
    log(f"results: {out / 'results.json'}")
    log(f"report:  {out / 'report.html'}")
    return out / "results.json"


# --- step bodies -----------------------------------------------------------------------------------


def _world_generate(out: Path, docs: int, variant: str, scheme: str, seed: int, split: str) -> None:
    from prealign import world

    world.generate(out, docs=docs, variant=variant, scheme=scheme, seed=seed, split=split)


def _write_attack_files(plan: Plan, eval_dir: Path) -> None:
    from prealign.evals.attacks import load_suite, write_attacks

    # wild first: if the jailbreak data is missing, say so before hours of training
    n = {"world-heldout": plan.n_heldout, "wild": plan.n_wild}
    for s in ("wild", "world-heldout"):
        attacks = load_suite(s, n=n[s], seed=plan.seed, scheme=plan.scheme, max_chars=plan.max_prompt_chars)
        write_attacks(eval_dir / f"attacks-{s}.jsonl", attacks)


def _train_tokenizer(plan: Plan, data: Path, out: Path) -> None:
    from prealign.tokenizer import train_tokenizer

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    train_tokenizer([data / "tagged", data / "mle"], tmp, vocab_size=plan.vocab_size, scheme=plan.scheme)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def _train(plan: Plan, data: Path, out: Path, variant: str, tokenizer: Path | None, init_from: Path | None,
           tokens: int, minutes: float, seed: int) -> None:
    from prealign.train import CHECKPOINT_FILE, TrainConfig, model_meta, train

    if out.exists() and not (out / CHECKPOINT_FILE).exists() and not model_meta(out).get("finished"):
        shutil.rmtree(out)  # killed before its first checkpoint: start that run again
    extra = {k: getattr(plan, k) for k in ("seq_len", "hidden_size", "n_layers") if getattr(plan, k)}
    cfg = TrainConfig(data=str(data), out=str(out), tokenizer=str(tokenizer) if tokenizer else None,
                      init_from=str(init_from) if init_from else None, preset=plan.preset, variant=variant,
                      scheme=plan.scheme, max_tokens=tokens, max_minutes=minutes, seed=seed, resume=True,
                      progress=True, **extra)
    train(cfg)


def _gen_config(plan: Plan):
    from prealign.evals.redteam import GenConfig

    return GenConfig(max_new_tokens=plan.max_new_tokens, temperature=plan.temperature)


_MODEL_CACHE: dict[str, Any] = {}


def _load(path: Path):
    key = str(path.resolve())
    if key not in _MODEL_CACHE:
        from prealign.evals._models import load_model_dir

        _MODEL_CACHE.clear()  # keep one model in memory
        _MODEL_CACHE[key] = load_model_dir(path)
    return _MODEL_CACHE[key]


def _responder(plan: Plan, row: Row, models: Path):
    from prealign.evals.redteam import PlainResponder, TaggedResponder

    model, tok = _load(models / row.model)
    if row.lock_mode is None:
        return PlainResponder(model, tok, _gen_config(plan), name=row.name)
    guard = row.guard(models / row.model) if row.guard else None
    return TaggedResponder(model, tok, row.lock_mode, _gen_config(plan), guard=guard, name=row.name)


def _eval_row(plan: Plan, row: Row, models: Path, attack_files: Mapping[str, Path], out: Path) -> None:
    from prealign.evals.attacks import load_attacks
    from prealign.evals.behaviour import behaviour_summary
    from prealign.evals.metrics import GUARD_METRICS, get_metric, summarise
    from prealign.evals.redteam import redteam_summary, run_attacks, transcripts

    responder = _responder(plan, row, models)
    summary: dict[str, Any] = {"row": row.name, "model": row.model, "lock_mode": row.lock_mode, "redteam": {}, "transcripts": {}}
    from prealign.evals.redteam import world_canaries

    canaries = world_canaries()
    for s, f in attack_files.items():
        outcomes = run_attacks(responder, load_attacks(f), samples=plan.samples, seed=plan.seed, all_canaries=canaries)
        _write_jsonl(out / f"{s}.jsonl", outcomes)
        hazard = [o for o in outcomes if o["canaries"] and not o["authorised"]]
        summary["redteam"][s] = redteam_summary(hazard)
        summary["redteam"][s]["benign_any_leak"] = get_metric("any_leak_rate")([o for o in outcomes if not o["canaries"]]).to_dict()
        summary["transcripts"][s] = transcripts(outcomes)
        if row.guard is not None:
            summary.setdefault("guard", {})[s] = {
                "benign": summarise([o for o in outcomes if not (o["canaries"] and not o["authorised"])], GUARD_METRICS),
                "hazard": summarise(hazard, GUARD_METRICS),
            }
        if s == "world-heldout":
            summary["behaviour"] = behaviour_summary(outcomes)
    if row.guard is not None:
        from prealign.probes import Probe, summary as probe_summary

        summary["guard_probe"] = probe_summary(Probe.load(models / row.model))
    write_json(out / "summary.json", summary)


def _guard_plot(model_dir: Path, outcomes_file: Path, out_png: Path, n_each: int = 3) -> None:
    """P(human) read by the guard's probe along a few replies of the *unguarded* lock: leaking ones
    (any hazard's canary; the guard should fire before it) and benign ones (it should not fire)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prealign.probes import Probe, guard_readings
    from prealign.tokenizer import encode_prompt, encode_tagged

    model, tok = _load(model_dir)
    probe = Probe.load(model_dir)
    outcomes = _read_jsonl(outcomes_file)
    leaks = [o for o in outcomes if o.get("leaked") or o.get("leaked_any")][:n_each]  # any hazard's canary
    benign = [o for o in outcomes if not o["canaries"] and o.get("reply")][:n_each]
    picked = [(o, "leak") for o in leaks] + [(o, "benign") for o in benign]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for o, kind in picked:
        prompt = encode_prompt(tok, o["prompt"], probe.scheme)
        seq = prompt + encode_tagged(tok, o["reply"])
        p = guard_readings(model, tok, probe, [seq])[0][len(prompt):]
        ax.plot(range(len(p)), p, color="tab:red" if kind == "leak" else "tab:blue", alpha=0.8,
                label=kind if kind not in ax.get_legend_handles_labels()[1] else None)
    ax.axhline(probe.threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {probe.threshold:g} (k={probe.k})")
    ax.set_xlabel("reply token")
    ax.set_ylabel("P(human) at the guard's layer")
    ax.set_ylim(0, 1)
    ax.set_title(f"Probe guard readings along tagged+lock replies ({len(leaks)} leaking, {len(benign)} benign)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def _humans(plan: Plan, model_dir: Path, texts: Sequence[str], also_in: Sequence[str]) -> dict[str, Any]:
    from prealign.evals.humans import evaluate_humans

    model, tok = _load(model_dir)
    return evaluate_humans(model, tok, texts, scheme=plan.scheme, n_items=plan.human_items,
                           max_passages=plan.human_passages, seed=plan.seed, also_in=also_in)


def _probes(plan: Plan, model_dir: Path, texts: Sequence[str], evals: Path) -> None:
    from prealign.evals.probes import plot_probes, probe_model

    model, tok = _load(model_dir)
    res = probe_model(model, tok, texts, scheme=plan.scheme, seed=plan.seed)
    plot_probes(res, evals / "probes.png")
    write_json(evals / "probes.json", res)


def _ensemble(plan: Plan, models: Path, attack_files: Mapping[str, Path], evals: Path) -> None:
    from prealign.evals.attacks import load_attacks
    from prealign.evals.ensemble import ensemble_from_outcomes
    from prealign.evals.redteam import TaggedResponder, run_attacks

    res = {}
    for s, f in attack_files.items():
        attacks = load_attacks(f)
        per = {"tagged": _read_jsonl(evals / "tagged+lock" / f"{s}.jsonl")} if (evals / "tagged+lock" / f"{s}.jsonl").exists() else {}
        for k in range(1, plan.ensemble_seeds + 1):
            model, tok = _load(models / f"tagged-seed{k}")
            per[f"tagged-seed{k}"] = run_attacks(TaggedResponder(model, tok, "lock", _gen_config(plan)), attacks, plan.samples, plan.seed)
        res[s] = ensemble_from_outcomes(per)
    write_json(evals / "ensemble.json", res)


# --- results.json ------------------------------------------------------------------------------------

RESULTS_VERSION = 1


def assemble_results(out: Path, plan: Plan, rows: Sequence[str], commands: Sequence[str], seconds: Mapping[str, float]) -> dict[str, Any]:
    """Gather the step outputs into the one results document the report reads."""
    evals = out / "evals"
    variants: dict[str, Any] = {}
    for r in rows:
        f = evals / r / "summary.json"
        if not f.exists():
            continue
        s = read_json(f)
        h = evals / "humans" / f"{ROWS[r].model}.json"
        variants[r] = {
            "model": s["model"], "lock_mode": s["lock_mode"],
            "redteam": s["redteam"], "behaviour": s.get("behaviour", {}),
            "humans": read_json(h) if h.exists() else {}, "transcripts": s.get("transcripts", {}),
        }
        if "guard" in s:
            variants[r]["guard"] = s["guard"]
            variants[r]["guard_probe"] = s.get("guard_probe")
    models = {}
    for m in MODELS:
        meta = out / "models" / m / "prealign_model.json"
        if meta.exists():
            mm = read_json(meta)
            models[m] = {k: mm.get(k) for k in ("variant", "n_params", "steps", "tokens_seen", "train_seconds", "tokens_per_s",
                                                "final_val_loss", "stop_reason", "seed", "data_hash") if k in mm}
    res: dict[str, Any] = {
        "version": RESULTS_VERSION,
        "plan": plan.to_dict(),
        "rows": list(rows),
        "variants": variants,
        "models": models,
        "probes": read_json(evals / "probes.json") if (evals / "probes.json").exists() else None,
        "probe_plot": "evals/probes.png" if (evals / "probes.png").exists() else None,
        "ensemble": read_json(evals / "ensemble.json") if (evals / "ensemble.json").exists() else None,
        "guard_plot": "evals/guard_readings.png" if (evals / "guard_readings.png").exists() else None,
        "commands": list(commands),
        "step_seconds": dict(seconds),
        "total_seconds": round(sum(seconds.values()), 1),
        "meta": run_meta(seed=plan.seed),
    }
    return res
