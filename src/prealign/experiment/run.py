"""The experiment: corpora → tokenizer → every model trained on exactly the same token budget (the
deciding ones with several seeds) → did they learn their world? → every evaluation →
`results.json` → one HTML report. Resumable step by step.

    prealign experiment --plan quick --out runs/demo          # ≤ 20 minutes on 2 CPU cores
    prealign experiment --plan standard --out runs/standard   # ≤ 2 hours: 3 seeds of the deciding rows
    prealign experiment --plan sweep --out runs/sweep         # the deciding rows at several budgets
    prealign experiment --plan smoke --out runs/smoke         # a minute or two (tests)

Layout of DIR:
    data/<corpus>/             world corpora (tagged, mle, filtered, sft, ...), Parquet shards
    data/eval/                 the eval split (tagged documents) and the attack files per suite
    data/eval-mle/             the same eval scenarios rendered as mle (for the human-text check)
    tokenizer/                 one BPE tokenizer (trained on tagged + mle text) shared by all models
    models/<model>-s<k>/       HF directories, one per model and seed (k = 0 .. seeds-1)
    evals/<row>/s<k>/<suite>.jsonl   every scored reply; evals/<row>/s<k>/summary.json its figures
    evals/diagnostics.json     did the models learn their world (calib split)
    evals/humans/<model>.json, evals/probes.json, evals/probes.png, evals/ensemble.json
    steps/<step>.json          one marker per finished step (seconds, command): a rerun skips it
    results.json, report.html  the results and the report (a pure function of results.json)

Every step records the `prealign` command that reproduces it, built from the same configuration
objects the step runs with (`TrainConfig.command()`, `RedteamConfig.command()`, ...). Pretraining
runs use `--exact-budget`: each sees exactly `train_tokens`, whatever the machine's load, and a
clock cap that would cut one short is an error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from prealign._util import command_line, read_json, read_jsonl, run_meta, write_json, write_jsonl
from prealign.errors import PrealignError
from prealign.experiment.plans import CORPORA, MODELS, ROWS, CorpusSpec, Plan, Row, get_plan, models_of, suite_sizes
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


def seeds_of(plan: Plan, model: str) -> range:
    """The seed indices a model is trained with: every plan seed for a deciding model, one else."""
    return range(plan.seeds if MODELS[model].deciding else 1)


def model_dir(models: Path, model: str, k: int) -> Path:
    return models / f"{model}-s{k}"


# --- the experiment ----------------------------------------------------------------------------------


def run_experiment(plan: Plan | str, out: str | os.PathLike, log: Log | None = None, threads: int | None = None,
                   shared: str | os.PathLike | None = None) -> Path:
    """Run (or resume) the whole experiment into `out`; returns the path of `results.json`.
    A plan with `budgets` is a sweep (`run_sweep`). `shared`: a directory whose `data/` and
    `tokenizer/` this run reuses (the sweep's points share one set of corpora)."""
    plan = get_plan(plan) if isinstance(plan, str) else plan
    if plan.budgets:
        return run_sweep(plan, out, log=log, threads=threads)
    rows = plan.row_names
    scheme = get_scheme(plan.scheme)  # resolved once; every step receives the object
    out = Path(out)
    log = log or (lambda s: None)
    _claim(out, plan)
    if threads:
        import torch

        torch.set_num_threads(threads)
    steps = Steps(out, log)
    base = Path(shared) if shared is not None else out
    data, tok_dir, models, evals = base / "data", base / "tokenizer", out / "models", out / "evals"
    needed = models_of(rows)

    # 1. corpora (the same scenarios for every variant), the eval split, the attack files; 2. tokenizer
    corpora = {MODELS[m].corpus for m in needed}
    attack_files = attack_paths(plan, data) if shared is not None else prepare_data(plan, scheme, data, tok_dir, steps, corpora)

    # 3. models: every pretraining run sees exactly train_tokens; fine-tuning sft_share of it
    for m in needed:
        for k in seeds_of(plan, m):
            _train_step(steps, f"train/{m}-s{k}", _train_config(plan, m, k, data, tok_dir, models))

    # 4. did the models learn their world? (calib split, seed 0)
    from prealign.experiment.diagnostics import FINE_TUNED, RAW_PRETRAINED

    present = {m: model_dir(models, m, 0) for m in (*RAW_PRETRAINED, *FINE_TUNED, "tagged") if m in needed}
    steps.run("diagnostics", lambda: write_json(evals / "diagnostics.json", _diagnostics(plan, scheme, present)))

    # 5. evaluations (a guarded row first calibrates its probe on the calib split, never on eval)
    for r in rows:
        row = ROWS[r]
        if row.guard == "on":
            for k in seeds_of(plan, row.model):
                d = model_dir(models, row.model, k)
                steps.run(f"guard/{row.model}-s{k}", lambda d=d: _calibrate_guard(plan, d),
                          command_line("probe train", model=d, calib_replies=plan.calib_replies, seed=plan.seed))
    for r in rows:
        row = ROWS[r]
        for k in seeds_of(plan, row.model):
            d = model_dir(models, row.model, k)
            configs = {s: _redteam_config(plan, row, f) for s, f in attack_files.items()}
            for s, cfg in configs.items():
                steps.commands.append(cfg.command(d, outcomes=evals / r / f"s{k}" / f"{s}.jsonl"))
            steps.run(f"eval/{r}/s{k}", lambda row=row, d=d, k=k, configs=configs:
                      _eval_row(row, d, k, configs, evals / row.name / f"s{k}"))
    if plan.human_passages:
        for m in needed:
            d = model_dir(models, m, 0)
            steps.run(f"humans/{m}", lambda d=d, m=m: write_json(evals / "humans" / f"{m}.json", _humans(plan, scheme, d, data)),
                      command_line("eval humans", model=d, data=data / "eval", docs=plan.eval_docs, items=plan.human_items,
                                   passages=plan.human_passages, also_in=data / "eval-mle", seed=plan.seed,
                                   json=evals / "humans" / f"{m}.json"))
    if plan.probe_docs and "tagged" in needed:
        d = model_dir(models, "tagged", 0)
        steps.run("probes", lambda: _probes(plan, scheme, d, data / "eval", evals),
                  command_line("eval probes", model=d, data=data / "eval", docs=plan.probe_docs,
                               seed=plan.seed, plot=evals / "probes.png", json=evals / "probes.json"))
    if plan.seeds >= 2 and "tagged+lock" in rows:
        steps.run("ensemble", lambda: write_json(evals / "ensemble.json", _ensemble(plan, evals, tuple(attack_files))))
    if "tagged+guard" in rows and "tagged+lock" in rows:
        lock_outcomes = evals / "tagged+lock" / "s0" / "world-heldout.jsonl"
        steps.run("guard/plot", lambda: _guard_plot(model_dir(models, "tagged", 0), lock_outcomes, evals / "guard_readings.png"))
        # the guard's benign fires and drift caught on the eval split, replayed on the unguarded lock's replies
        steps.run("guard/eval", lambda: write_json(evals / "guard_eval.json",
                                                   _replay_guard(model_dir(models, "tagged", 0), lock_outcomes)))

    # 6. tamper resistance: adversarial fine-tuning of every row's model (optional: hours at full size)
    if plan.tamper:
        from prealign.experiment.tamper import TamperConfig, run_tamper

        tcfg = TamperConfig(steps=plan.tamper_steps, lrs=plan.tamper_lrs, n_eval=plan.tamper_eval)
        steps.run("tamper", lambda: run_tamper(out, tcfg, log=log),
                  command_line("attack finetune", experiment=out, steps=",".join(map(str, tcfg.steps)),
                               lrs=",".join(map(str, tcfg.lrs)), n_eval=tcfg.n_eval))

    # 7. results and report (always rebuilt: cheap, and a pure function of the step outputs)
    from prealign.experiment.results import assemble_results

    results = assemble_results(out, plan, steps.commands, steps.seconds())
    write_json(out / "results.json", results)
    from prealign.report import write_report

    write_report(out / "results.json", out / "report.html")
    log(f"results: {out / 'results.json'}")
    log(f"report:  {out / 'report.html'}")
    return out / "results.json"


def _claim(out: Path, plan: Plan, free: tuple[str, ...] = ()) -> None:
    """`out` holds this plan's experiment (a rerun resumes it), or is new. Fields in `free` may
    change between runs (a sweep's `budgets`: each point is an experiment of its own, so points
    can be added to a finished sweep, or left out, without redoing the others)."""
    out.mkdir(parents=True, exist_ok=True)
    plan_file = out / "plan.json"
    want = json.loads(json.dumps(plan.to_dict()))  # as stored (tuples become lists)
    if plan_file.exists():
        old = read_json(plan_file)
        diff = sorted(k for k, v in want.items() if (old.get("plan") or {}).get(k) != v)
        fixed = [k for k in diff if k not in free]
        if fixed:
            raise PrealignError(f"{out}: holds an experiment with another plan ({', '.join(fixed)} differ); use another --out")
        if diff:
            write_json(plan_file, {**old, "plan": plan.to_dict()})
    else:
        write_json(plan_file, {"plan": plan.to_dict(), **run_meta(seed=plan.seed)})


def attack_paths(plan: Plan, data: Path) -> dict[str, Path]:
    return {s: data / "eval" / f"attacks-{s}.jsonl" for s in suite_sizes(plan)}


def prepare_data(plan: Plan, scheme: Scheme, data: Path, tok_dir: Path, steps: Steps, corpora: set[str]) -> dict[str, Path]:
    """Corpora, the eval split and its mle rendering, the attack files, one tokenizer. Returns the
    attack file of each suite."""
    for name in sorted(corpora | {"tagged", "mle"}, key=list(CORPORA).index):
        _corpus_step(steps, f"corpus/{name}", data / name, CORPORA[name], plan.sft_docs if CORPORA[name].sft else plan.docs,
                     scheme, plan, "train")
    _corpus_step(steps, "corpus/eval", data / "eval", CORPORA["tagged"], plan.eval_docs, scheme, plan, "eval")
    _corpus_step(steps, "corpus/eval-mle", data / "eval-mle", CORPORA["mle"], plan.eval_docs, scheme, plan, "eval")
    attack_files = attack_paths(plan, data)
    steps.run("attacks", lambda: _write_attack_files(plan, scheme, attack_files))
    sources = [data / "tagged", data / "mle"]
    steps.run("tokenizer", lambda: _train_tokenizer(sources, tok_dir, plan.vocab_size, scheme),
              command_line("tokenizer train", data=sources, out=tok_dir, vocab_size=plan.vocab_size, scheme=scheme.name))
    return attack_files


# --- step bodies -----------------------------------------------------------------------------------


def _corpus_step(steps: Steps, name: str, out: Path, spec: CorpusSpec, docs: int, scheme: Scheme, plan: Plan, split: str) -> None:
    """One corpus of the world: the plan's language share in every corpus (the same scenarios in
    the same language across variants), plus the corpus's own world settings."""
    from prealign import world

    settings = {"language_share": plan.language_share, **dict(spec.world)}
    config = world.WorldConfig.from_dict(settings)
    steps.run(name, lambda: world.generate(out, docs=docs, variant=spec.variant, scheme=scheme.name, seed=plan.seed,
                                           split=split, config=config),
              command_line("world", out=out, docs=docs, variant=spec.variant, scheme=scheme.name, seed=plan.seed,
                           split=split, **settings))


def _write_attack_files(plan: Plan, scheme: Scheme, files: Mapping[str, Path]) -> None:
    from prealign.evals.attacks import load_suite, write_attacks

    # wild first: if the jailbreak data is missing, say so before hours of training
    n = suite_sizes(plan)
    for s in sorted(files, key=lambda s: s != "wild"):
        attacks = load_suite(s, n=n[s], seed=plan.seed, scheme=scheme.name, max_chars=plan.max_prompt_chars)
        write_attacks(files[s], attacks)


def _train_tokenizer(sources: Sequence[Path], out: Path, vocab_size: int, scheme: Scheme) -> None:
    from prealign.tokenizer import train_tokenizer

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    train_tokenizer(list(sources), tmp, vocab_size=vocab_size, scheme=scheme)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


FINETUNE_BATCH = 4  # rows per step when fine-tuning: a small budget (2% of pretraining) still takes enough steps


def _train_config(plan: Plan, model: str, k: int, data: Path, tok_dir: Path, models: Path):
    """Seed k of `model`: a pretraining run of exactly `plan.train_tokens`, or a fine-tuning run
    of `plan.sft_tokens` from seed k of the model it starts from."""
    import math

    from prealign.model import PRESETS
    from prealign.train import TrainConfig

    spec = MODELS[model]
    common = dict(data=str(data / spec.corpus), out=str(model_dir(models, model, k)), preset=plan.preset,
                  variant=CORPORA[spec.corpus].variant, scheme=plan.scheme, seed=plan.seed + k, resume=True,
                  exact_budget=True, max_minutes=plan.max_train_minutes, packing=plan.packing, progress=True)
    if spec.init_from is None:
        shape = {f: getattr(plan, f) for f in ("seq_len", "batch_size", "hidden_size", "n_layers") if getattr(plan, f)}
        return TrainConfig(tokenizer=str(tok_dir), max_tokens=plan.train_tokens, **common, **shape)
    T = plan.seq_len or PRESETS[plan.preset].seq_len
    steps = max(1, math.ceil(plan.sft_tokens / (FINETUNE_BATCH * T)))
    return TrainConfig(init_from=str(model_dir(models, spec.init_from, k)), max_tokens=plan.sft_tokens,
                       batch_size=FINETUNE_BATCH, micro_batch_size=FINETUNE_BATCH, warmup_steps=max(1, steps // 10),
                       eval_every=max(1, steps), checkpoint_every=max(1, steps), **common)


def _train_step(steps: Steps, name: str, cfg) -> None:
    from prealign.model import model_meta
    from prealign.train import CHECKPOINT_FILE, train

    def run() -> None:
        out = Path(cfg.out)
        if out.exists() and not (out / CHECKPOINT_FILE).exists() and not model_meta(out).get("finished"):
            shutil.rmtree(out)  # killed before its first checkpoint: start that run again
        train(cfg)

    steps.run(name, run, cfg.command())


def _sampling(plan: Plan):
    from prealign.sampling import Sampling

    return Sampling(max_new_tokens=plan.max_new_tokens, temperature=plan.temperature, seed=plan.seed, batch_size=32)


def _diagnostics(plan: Plan, scheme: Scheme, present: Mapping[str, Path]) -> dict[str, Any]:
    from prealign.experiment.diagnostics import world_learned

    return world_learned(present, _load, n=plan.diagnostic_requests, seed=plan.seed, scheme=scheme.name,
                         sampling=_sampling(plan), lint_samples=plan.lint_samples,
                         languages=("valley", "hill") if plan.language_share else ("valley",))


def _calibrate_guard(plan: Plan, d: Path) -> None:
    from prealign.probes import ProbeConfig, ensure_probe

    ensure_probe(d, ProbeConfig(calib_replies=plan.calib_replies, seed=plan.seed))


def _redteam_config(plan: Plan, row: Row, attacks: Path):
    from prealign.evals.redteam import RedteamConfig
    from prealign.modes import LockSettings

    return RedteamConfig(attacks=str(attacks), lock=row.lock or LockSettings(), guard=row.guard, samples=plan.samples,
                         sampling=_sampling(plan))


_MODEL_CACHE: dict[str, Any] = {}


def _load(path: Path):
    key = str(Path(path).resolve())
    if key not in _MODEL_CACHE:
        from prealign.model import load_model

        _MODEL_CACHE.clear()  # keep one model in memory
        _MODEL_CACHE[key] = load_model(path)
    return _MODEL_CACHE[key]


def _responder(row: Row, d: Path, config):
    from prealign.evals.redteam import PlainResponder, TaggedResponder
    from prealign.probes import resolve_guard

    model, tok = _load(d)
    if row.lock is None:
        return PlainResponder(model, tok, config.sampling, name=row.name)
    guard = resolve_guard(model, tok, row.guard) if row.guard == "on" else None
    return TaggedResponder(model, tok, row.lock, config.sampling, guard=guard, name=row.name)


def _eval_row(row: Row, d: Path, k: int, configs: Mapping[str, Any], out: Path) -> None:
    """Every suite for one row and one model seed: the scored outcomes (each tagged with the seed)
    and this seed's summary."""
    from prealign.evals.attacks import load_attacks
    from prealign.evals.redteam import run_attacks, world_canaries

    canaries = world_canaries()
    for s, cfg in configs.items():
        outcomes = run_attacks(_responder(row, d, cfg), load_attacks(cfg.attacks), samples=cfg.samples,
                               seed=cfg.sampling.seed, all_canaries=canaries)
        write_jsonl(out / f"{s}.jsonl", [{**o, "model_seed": k} for o in outcomes])
    if row.guard == "on":
        from prealign.probes import Probe, summary as probe_summary

        write_json(out / "guard_probe.json", probe_summary(Probe.load(d)))


def _guard_plot(d: Path, outcomes_file: Path, out_png: Path, n_each: int = 3) -> None:
    """P(human) read by the guard's probe along a few replies of the *unguarded* lock: leaking ones
    (any hazard's canary; the guard should fire before it) and benign ones (it should not fire)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prealign.conversation import human_prompt_ids
    from prealign.probes import Probe, guard_readings
    from prealign.tokenizer import encode_tagged

    model, tok = _load(d)
    probe = Probe.load(d)
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
    ax.axhline(probe.threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {probe.threshold:g} ({probe.rule_text})")
    ax.set_xlabel("reply token")
    ax.set_ylabel("P(human) at the guard's layer")
    ax.set_ylim(0, 1)
    ax.set_title(f"Probe guard readings along tagged+lock replies ({len(leaks)} leaking, {len(benign)} benign)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def _replay_guard(d: Path, outcomes_file: Path) -> dict[str, Any]:
    from prealign.probes import replay_guard

    model, tok = _load(d)
    return replay_guard(d, read_jsonl(outcomes_file), model=model, tokenizer=tok)


def _humans(plan: Plan, scheme: Scheme, d: Path, data: Path) -> dict[str, Any]:
    from prealign.data import read_texts
    from prealign.evals.humans import evaluate_humans

    model, tok = _load(d)
    return evaluate_humans(model, tok, read_texts(data / "eval", plan.eval_docs), scheme=scheme, n_items=plan.human_items,
                           max_passages=plan.human_passages, seed=plan.seed, also_in=read_texts(data / "eval-mle"))


def _probes(plan: Plan, scheme: Scheme, d: Path, eval_data: Path, evals: Path) -> None:
    from prealign.data import read_texts
    from prealign.probes.survey import plot_probes, probe_model

    model, tok = _load(d)
    res = probe_model(model, tok, read_texts(eval_data, plan.probe_docs), scheme=scheme, seed=plan.seed)
    plot_probes(res, evals / "probes.png")
    write_json(evals / "probes.json", res)


def _ensemble(plan: Plan, evals: Path, suites: Sequence[str]) -> dict[str, Any]:
    """Majority vote and any-veto over the tagged+lock seeds, against what independent errors
    predict (the measured error correlation shows how far apart the seeds really are)."""
    from prealign.evals.ensemble import ensemble_from_outcomes

    res = {}
    for s in suites:
        per = {f"tagged+lock-s{k}": read_jsonl(evals / "tagged+lock" / f"s{k}" / f"{s}.jsonl") for k in range(plan.seeds)}
        res[s] = {metric: ensemble_from_outcomes(per, error_key=key)
                  for metric, key in (("leak_rate", "leaked"), ("any_leak_rate", "leaked_any"))}
    return res


# --- the sweep --------------------------------------------------------------------------------------


def run_sweep(plan: Plan, out: str | os.PathLike, log: Log | None = None, threads: int | None = None) -> Path:
    """The plan's rows at each of `plan.budgets` (an experiment each, sharing one set of corpora
    and one tokenizer), then one results.json with the curve of each row's leak against budget.
    A rerun with more budgets (`--set budgets=...`) computes only the new points."""
    out = Path(out)
    log = log or (lambda s: None)
    _claim(out, plan, free=("budgets",))
    scheme = get_scheme(plan.scheme)
    corpora = {MODELS[m].corpus for m in models_of(plan.row_names)}
    prepare_data(plan, scheme, out / "shared" / "data", out / "shared" / "tokenizer", Steps(out, log), corpora)
    points = {}
    for b in plan.budgets:
        sub = dataclasses.replace(plan, name=f"{plan.name}@{b}", train_tokens=b, budgets=())
        log(f"== budget {b:,} tokens")
        points[b] = run_experiment(sub, out / f"budget-{b}", log=log, threads=threads, shared=out / "shared")
    from prealign.experiment.results import assemble_sweep

    results = assemble_sweep(out, plan, {b: read_json(p) for b, p in points.items()})
    write_json(out / "results.json", results)
    from prealign.report import write_report

    write_report(out / "results.json", out / "report.html")
    log(f"results: {out / 'results.json'}")
    log(f"report:  {out / 'report.html'}")
    return out / "results.json"
