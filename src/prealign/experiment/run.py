"""The experiment: corpora → tokenizer → every baseline trained with the same budget → every
evaluation → `results.json` → one HTML report. Resumable step by step.

    prealign experiment --plan quick --out runs/demo        # ≤ 20 minutes on 2 CPU cores
    prealign experiment --plan smoke --out runs/smoke       # a minute or two (tests)
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

Every step records the `prealign` command that reproduces it, built from the same configuration
objects the step runs with (`TrainConfig.command()`, `RedteamConfig.command()`, ...).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from prealign._util import command_line, read_json, read_jsonl, run_meta, write_json, write_jsonl
from prealign.data import CORPUS_VARIANTS
from prealign.errors import PrealignError
from prealign.experiment.plans import MODELS, ROWS, SUITES, Plan, Row, check_rows, get_plan, DEFAULT_ROWS
from prealign.modes import Scheme, get_scheme

Log = Callable[[str], None]


class Steps:
    """Markers in DIR/steps/: a step runs once; its marker is written only after its outputs.
    Each step also records the command that reproduces it."""

    def __init__(self, out: Path, log: Log):
        self.dir = out / "steps"
        self.log = log
        self.commands: list[str] = []

    def done(self, name: str) -> bool:
        return (self.dir / f"{_safe(name)}.json").exists()

    def run(self, name: str, fn: Callable[[], Any], command: str | None = None) -> None:
        if command is not None:
            self.commands.append(command)
        if self.done(name):
            self.log(f"✓ {name} (done earlier)")
            return
        self.log(f"→ {name}")
        t0 = time.time()
        fn()
        secs = time.time() - t0
        write_json(self.dir / f"{_safe(name)}.json", {"step": name, "seconds": round(secs, 2), "command": command,
                                                      "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        self.log(f"  {name}: {secs:.1f}s")

    def seconds(self) -> dict[str, float]:
        if not self.dir.exists():
            return {}
        return {rec["step"]: rec["seconds"] for rec in (read_json(p) for p in sorted(self.dir.glob("*.json")))}


def _safe(name: str) -> str:
    return name.replace("/", "__").replace("+", "_plus_")


# --- the experiment ----------------------------------------------------------------------------------


def run_experiment(plan: Plan | str, out: str | os.PathLike, rows: Sequence[str] | None = None,
                   log: Log | None = None, threads: int | None = None) -> Path:
    """Run (or resume) the whole experiment into `out`; returns the path of `results.json`."""
    plan = get_plan(plan) if isinstance(plan, str) else plan
    rows = check_rows(rows or DEFAULT_ROWS)
    scheme = get_scheme(plan.scheme)  # resolved once; every step receives the object
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
    data, models, evals, tok_dir = out / "data", out / "models", out / "evals", out / "tokenizer"

    # 1. corpora (same scenarios for every variant), the eval split, the attack files
    for v in CORPUS_VARIANTS:
        _corpus_step(steps, f"corpus/{v}", data / v, plan.sft_docs if v == "sft" else plan.docs, v, scheme, plan.seed, "train")
    _corpus_step(steps, "corpus/eval", data / "eval", plan.eval_docs, "tagged", scheme, plan.seed, "eval")
    _corpus_step(steps, "corpus/eval-mle", data / "eval-mle", plan.eval_docs, "mle", scheme, plan.seed, "eval")
    attack_files = {s: data / "eval" / f"attacks-{s}.jsonl" for s in SUITES}
    steps.run("attacks", lambda: _write_attack_files(plan, scheme, attack_files))

    # 2. one tokenizer for all
    tok_sources = [data / "tagged", data / "mle"]
    steps.run("tokenizer", lambda: _train_tokenizer(tok_sources, tok_dir, plan.vocab_size, scheme),
              command_line("tokenizer train", data=tok_sources, out=tok_dir, vocab_size=plan.vocab_size, scheme=scheme.name))

    # 3. models: the same token budget for every pretraining run; mle+sft fine-tunes mle
    for v in ("tagged", "mle", "filtered"):
        _train_step(steps, f"train/{v}", _train_config(plan, data / v, models / v, v, tokenizer=tok_dir))
    _train_step(steps, "train/mle+sft", _train_config(plan, data / "sft", models / "mle+sft", "sft", init_from=models / "mle"))
    for s in range(1, plan.ensemble_seeds + 1):
        name = f"tagged-seed{s}"
        _train_step(steps, f"train/{name}", _train_config(plan, data / "tagged", models / name, "tagged", tokenizer=tok_dir,
                                                          seed=plan.seed + s))

    # 4. evaluations (a guarded row first calibrates its probe on the calib split, never on eval)
    for r in rows:
        row = ROWS[r]
        if row.guard == "on":
            steps.run(f"guard/{r}", lambda row=row: _calibrate_guard(models / row.model),
                      command_line("probe train", model=models / row.model))
    for r in rows:
        row = ROWS[r]
        configs = {s: _redteam_config(plan, row, attack_files[s]) for s in SUITES}
        for s, cfg in configs.items():
            steps.commands.append(cfg.command(models / row.model, outcomes=evals / r / f"{s}.jsonl"))
        steps.run(f"eval/{r}", lambda row=row, configs=configs: _eval_row(plan, row, models, configs, evals / row.name))
    for m in MODELS:
        steps.run(f"humans/{m}", lambda m=m: write_json(evals / "humans" / f"{m}.json", _humans(plan, scheme, models / m, data)),
                  command_line("eval humans", model=models / m, data=data / "eval", docs=plan.eval_docs,
                               items=plan.human_items, passages=plan.human_passages, also_in=data / "eval-mle", seed=plan.seed,
                               json=evals / "humans" / f"{m}.json"))
    steps.run("probes", lambda: _probes(plan, scheme, models / "tagged", data / "eval", evals),
              command_line("eval probes", model=models / "tagged", data=data / "eval", docs=plan.probe_docs,
                           seed=plan.seed, plot=evals / "probes.png", json=evals / "probes.json"))
    if plan.ensemble_seeds:
        steps.run("ensemble", lambda: _ensemble(plan, models, attack_files, evals))
    if "tagged+guard" in rows and "tagged+lock" in rows:
        steps.run("guard/plot", lambda: _guard_plot(models / "tagged", evals / "tagged+lock" / "world-heldout.jsonl",
                                                    evals / "guard_readings.png"))

    # 5. results and report (always rebuilt: cheap, and a pure function of the step outputs)
    results = assemble_results(out, plan, rows, steps.commands, steps.seconds())
    write_json(out / "results.json", results)
    from prealign.report import write_report

    write_report(out / "results.json", out / "report.html")
    log(f"results: {out / 'results.json'}")
    log(f"report:  {out / 'report.html'}")
    return out / "results.json"


# --- step bodies -----------------------------------------------------------------------------------


def _corpus_step(steps: Steps, name: str, out: Path, docs: int, variant: str, scheme: Scheme, seed: int, split: str) -> None:
    from prealign import world

    steps.run(name, lambda: world.generate(out, docs=docs, variant=variant, scheme=scheme.name, seed=seed, split=split),
              command_line("world", out=out, docs=docs, variant=variant, scheme=scheme.name, seed=seed, split=split))


def _write_attack_files(plan: Plan, scheme: Scheme, files: Mapping[str, Path]) -> None:
    from prealign.evals.attacks import load_suite, write_attacks

    # wild first: if the jailbreak data is missing, say so before hours of training
    n = {"world-heldout": plan.n_heldout, "wild": plan.n_wild}
    for s in ("wild", "world-heldout"):
        attacks = load_suite(s, n=n[s], seed=plan.seed, scheme=scheme.name, max_chars=plan.max_prompt_chars)
        write_attacks(files[s], attacks)


def _train_tokenizer(sources: Sequence[Path], out: Path, vocab_size: int, scheme: Scheme) -> None:
    from prealign.tokenizer import train_tokenizer

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    train_tokenizer(list(sources), tmp, vocab_size=vocab_size, scheme=scheme)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def _train_config(plan: Plan, data: Path, out: Path, variant: str, tokenizer: Path | None = None,
                  init_from: Path | None = None, seed: int | None = None):
    """A pretraining run (`plan.train_tokens`) or, with `init_from`, a fine-tuning run (`plan.sft_tokens`)."""
    from prealign.train import TrainConfig

    shape = {k: getattr(plan, k) for k in ("seq_len", "hidden_size", "n_layers") if getattr(plan, k)}
    sft = init_from is not None
    return TrainConfig(data=str(data), out=str(out), tokenizer=str(tokenizer) if tokenizer else None,
                       init_from=str(init_from) if init_from else None, preset=plan.preset, variant=variant,
                       scheme=plan.scheme, max_tokens=plan.sft_tokens if sft else plan.train_tokens,
                       max_minutes=plan.sft_minutes if sft else plan.train_minutes,
                       seed=plan.seed if seed is None else seed, resume=True, **({} if sft else shape))


def _train_step(steps: Steps, name: str, cfg) -> None:
    from prealign.model import model_meta
    from prealign.train import CHECKPOINT_FILE, train

    def run() -> None:
        out = Path(cfg.out)
        if out.exists() and not (out / CHECKPOINT_FILE).exists() and not model_meta(out).get("finished"):
            shutil.rmtree(out)  # killed before its first checkpoint: start that run again
        train(cfg)

    steps.run(name, run, cfg.command())


def _calibrate_guard(model_dir: Path) -> None:
    from prealign.probes import ensure_probe

    ensure_probe(model_dir)


def _redteam_config(plan: Plan, row: Row, attacks: Path):
    from prealign.evals.redteam import RedteamConfig
    from prealign.sampling import Sampling
    from prealign.modes import LockSettings

    return RedteamConfig(attacks=str(attacks), lock=row.lock or LockSettings(), guard=row.guard, samples=plan.samples,
                         sampling=Sampling(max_new_tokens=plan.max_new_tokens, temperature=plan.temperature, seed=plan.seed,
                                           batch_size=32))


_MODEL_CACHE: dict[str, Any] = {}


def _load(path: Path):
    key = str(path.resolve())
    if key not in _MODEL_CACHE:
        from prealign.model import load_model

        _MODEL_CACHE.clear()  # keep one model in memory
        _MODEL_CACHE[key] = load_model(path)
    return _MODEL_CACHE[key]


def _responder(row: Row, models: Path, config):
    from prealign.evals.redteam import PlainResponder, TaggedResponder
    from prealign.probes import resolve_guard

    model, tok = _load(models / row.model)
    if row.lock is None:
        return PlainResponder(model, tok, config.sampling, name=row.name)
    guard = resolve_guard(model, tok, row.guard) if row.guard == "on" else None
    return TaggedResponder(model, tok, row.lock, config.sampling, guard=guard, name=row.name)


def _eval_row(plan: Plan, row: Row, models: Path, configs: Mapping[str, Any], out: Path) -> None:
    from prealign.evals.attacks import load_attacks
    from prealign.evals.behaviour import behaviour_summary
    from prealign.evals.metrics import GUARD_METRICS, get_metric, summarise
    from prealign.evals.redteam import redteam_summary, run_attacks, transcripts, world_canaries

    summary: dict[str, Any] = {"row": row.name, "model": row.model, "lock_mode": row.lock.mode if row.lock else None,
                               "redteam": {}, "transcripts": {}}
    canaries = world_canaries()
    for s, cfg in configs.items():
        responder = _responder(row, models, cfg)
        outcomes = run_attacks(responder, load_attacks(cfg.attacks), samples=cfg.samples, seed=cfg.sampling.seed,
                               all_canaries=canaries)
        write_jsonl(out / f"{s}.jsonl", outcomes)
        hazard = [o for o in outcomes if o["canaries"] and not o["authorised"]]
        summary["redteam"][s] = redteam_summary(hazard)
        summary["redteam"][s]["benign_any_leak"] = get_metric("any_leak_rate")([o for o in outcomes if not o["canaries"]]).to_dict()
        summary["transcripts"][s] = transcripts(outcomes)
        if row.guard == "on":
            summary.setdefault("guard", {})[s] = {
                "benign": summarise([o for o in outcomes if not (o["canaries"] and not o["authorised"])], GUARD_METRICS),
                "hazard": summarise(hazard, GUARD_METRICS),
            }
        if s == "world-heldout":
            summary["behaviour"] = behaviour_summary(outcomes)
    if row.guard == "on":
        from prealign.probes import Probe, summary as probe_summary

        summary["guard_probe"] = probe_summary(Probe.load(models / row.model))
    write_json(out / "summary.json", summary)


def _guard_plot(model_dir: Path, outcomes_file: Path, out_png: Path, n_each: int = 3) -> None:
    """P(human) read by the guard's probe along a few replies of the *unguarded* lock: leaking ones
    (any hazard's canary; the guard should fire before it) and benign ones (it should not fire)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prealign.conversation import human_prompt_ids
    from prealign.modes import get_scheme
    from prealign.probes import Probe, guard_readings
    from prealign.tokenizer import encode_tagged

    model, tok = _load(model_dir)
    probe = Probe.load(model_dir)
    outcomes = read_jsonl(outcomes_file)
    leaks = [o for o in outcomes if o.get("leaked") or o.get("leaked_any")][:n_each]  # any hazard's canary
    benign = [o for o in outcomes if not o["canaries"] and o.get("reply")][:n_each]
    picked = [(o, "leak") for o in leaks] + [(o, "benign") for o in benign]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for o, kind in picked:
        prompt = human_prompt_ids(tok, o["prompt"], get_scheme(probe.scheme))
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


def _humans(plan: Plan, scheme: Scheme, model_dir: Path, data: Path) -> dict[str, Any]:
    from prealign.data import read_texts
    from prealign.evals.humans import evaluate_humans

    model, tok = _load(model_dir)
    return evaluate_humans(model, tok, read_texts(data / "eval", plan.eval_docs), scheme=scheme, n_items=plan.human_items,
                           max_passages=plan.human_passages, seed=plan.seed, also_in=read_texts(data / "eval-mle"))


def _probes(plan: Plan, scheme: Scheme, model_dir: Path, eval_data: Path, evals: Path) -> None:
    from prealign.data import read_texts
    from prealign.probes.survey import plot_probes, probe_model

    model, tok = _load(model_dir)
    res = probe_model(model, tok, read_texts(eval_data, plan.probe_docs), scheme=scheme, seed=plan.seed)
    plot_probes(res, evals / "probes.png")
    write_json(evals / "probes.json", res)


def _ensemble(plan: Plan, models: Path, attack_files: Mapping[str, Path], evals: Path) -> None:
    from prealign.evals.attacks import load_attacks
    from prealign.evals.ensemble import ensemble_from_outcomes
    from prealign.evals.redteam import TaggedResponder, run_attacks

    res = {}
    lock_row = ROWS["tagged+lock"]
    for s, f in attack_files.items():
        cfg = _redteam_config(plan, lock_row, f)
        attacks = load_attacks(f)
        own = evals / "tagged+lock" / f"{s}.jsonl"
        per = {"tagged": read_jsonl(own)} if own.exists() else {}
        for k in range(1, plan.ensemble_seeds + 1):
            model, tok = _load(models / f"tagged-seed{k}")
            per[f"tagged-seed{k}"] = run_attacks(TaggedResponder(model, tok, lock_row.lock, cfg.sampling), attacks,
                                                 cfg.samples, cfg.sampling.seed)
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
