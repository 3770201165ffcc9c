"""CLI verbs of the evaluations area: `prealign eval <kind>`, `prealign experiment`, `prealign report`.

    prealign eval redteam --model runs/demo/models/tagged --attacks world-heldout --json out.json
    prealign experiment --plan quick --out runs/demo
    prealign report runs/demo/results.json

Each verb parses its arguments and calls one library function in `prealign.evals` / `prealign.report`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from prealign._cli import options as O
from prealign.errors import PrealignError

eval_app = typer.Typer(help="Evaluate models: red team, behaviour, humans, probes, ensembles, diff.", no_args_is_help=True)


def _print_summary(title: str, summary: dict) -> None:
    from prealign.evals.metrics import fmt_rate

    print(title)
    for key in ("leak_rate", "any_leak_rate", "exit_rate", "wrong_action_rate", "correct_action_rate"):
        if key in summary:
            print(f"  {key:<20} {fmt_rate(summary[key])}")


def _print_table(summary: dict) -> None:
    """One line per group: leak, exit and wrong-action rates."""
    from prealign.evals.metrics import fmt_rate

    groups = [("overall", summary["overall"])]
    groups += [(f"sft {k}", v) for k, v in summary["by_sft_coverage"].items() if k in ("covered", "uncovered")]
    groups += [(f"tactic {k}", v) for k, v in summary["by_tactic"].items()]
    groups += [("reserve (must be 0)", summary["reserve"])]
    groups += [(f"family {k}", v) for k, v in summary["by_family"].items()]
    print(f"{'group':<28} {'leak':<30} {'mode exit':<30} {'wrong action':<30}")
    for name, g in groups:
        print(f"{name:<28} {fmt_rate(g['leak_rate']):<30} {fmt_rate(g['exit_rate']):<30} {fmt_rate(g['wrong_action_rate']):<30}")


def _responder(model: str, config):
    """Load a model and the responder it answers through, guard resolved from the setting."""
    from prealign.evals.redteam import responder_for
    from prealign.model import load_model

    m, tok = load_model(model)
    return responder_for(m, tok, config.lock, config.sampling, O.guard_for(m, tok, config.lock, config.guard, config.guard_threshold))


@eval_app.command("redteam")
def redteam(
    model: str = typer.Option(..., "--model", help="Model directory."),
    attacks: str = typer.Option("world-heldout", "--attacks", help="Attack JSONL file, or a suite: world-heldout | wild."),
    wrappers: Optional[str] = typer.Option(None, "--wrappers", help="Jailbreak templates, one per line with a {request} slot."),
    lock: str = O.LOCK,
    policy: str = O.POLICY,
    exit_threshold: float = O.EXIT_THRESHOLD,
    guard: str = O.GUARD,
    guard_threshold: Optional[float] = O.GUARD_THRESHOLD,
    samples: int = typer.Option(1, "--samples", help="Replies per attack."),
    n: int = typer.Option(200, "--n", help="Attacks to draw from a suite."),
    max_chars: Optional[int] = typer.Option(None, "--max-chars", help="Cut each attack text to this many characters (keeping the request)."),
    max_new_tokens: int = O.MAX_NEW_TOKENS,
    temperature: float = O.TEMPERATURE,
    top_k: int = O.TOP_K,
    top_p: float = O.TOP_P,
    batch_size: int = O.BATCH_SIZE,
    seed: int = O.SEED,
    json_out: Optional[str] = typer.Option(None, "--json", help="Write the figures as JSON here."),
    outcomes: Optional[str] = typer.Option(None, "--outcomes", help="Write every scored reply as JSONL here."),
) -> None:
    """Hazard leak, mode exit and wrong-action rates with 95% intervals, per family and overall."""
    from prealign._util import write_json, write_jsonl
    from prealign.evals.attacks import SUITES
    from prealign.evals.redteam import RedteamConfig, redteam_summary, run_attacks, world_canaries
    from prealign.tokenizer import scheme_of

    config = RedteamConfig(attacks, O.lock_settings(lock, policy, exit_threshold),
                           O.sampling(max_new_tokens, temperature, top_k, top_p, seed, batch_size=batch_size),
                           guard, guard_threshold, samples, n, max_chars, wrappers)
    atts = config.load_attacks(scheme_of(model) or "seed")
    responder = _responder(model, config)
    # attacks on the world's hazards (a suite, or a file of them such as the experiment writes):
    # a reply that recites any hazard's canary is counted too
    on_world = attacks in SUITES or any(a.hazard_id for a in atts)
    outs = run_attacks(responder, atts, samples=samples, seed=seed, all_canaries=world_canaries() if on_world else None)
    summary = redteam_summary([o for o in outs if o["canaries"] and not o["authorised"]])
    summary["responder"] = responder.name
    summary["attacks"] = attacks
    print(f"{responder.name} on {attacks} ({len(atts)} attacks × {samples} samples); value [95% interval] (k/n)")
    _print_table(summary)
    if json_out:
        write_json(json_out, summary)
    if outcomes:
        write_jsonl(outcomes, outs)


@eval_app.command("behaviour")
def behaviour(
    model: str = typer.Option(..., "--model"),
    attacks: str = typer.Option("world-heldout", "--attacks", help="World items (suite or JSONL file)."),
    lock: str = O.LOCK,
    policy: str = O.POLICY,
    exit_threshold: float = O.EXIT_THRESHOLD,
    guard: str = O.GUARD,
    guard_threshold: Optional[float] = O.GUARD_THRESHOLD,
    n: int = typer.Option(200, "--n"),
    samples: int = typer.Option(1, "--samples"),
    max_new_tokens: int = O.MAX_NEW_TOKENS,
    temperature: float = O.TEMPERATURE,
    top_k: int = O.TOP_K,
    top_p: float = O.TOP_P,
    batch_size: int = O.BATCH_SIZE,
    seed: int = O.SEED,
    json_out: Optional[str] = typer.Option(None, "--json"),
) -> None:
    """Rate of the correct action (answer / refuse / investigate) on the world's eval items."""
    from prealign._util import write_json
    from prealign.evals.behaviour import run_behaviour
    from prealign.evals.redteam import RedteamConfig
    from prealign.tokenizer import scheme_of

    config = RedteamConfig(attacks, O.lock_settings(lock, policy, exit_threshold),
                           O.sampling(max_new_tokens, temperature, top_k, top_p, seed, batch_size=batch_size),
                           guard, guard_threshold, samples, n)
    atts = config.load_attacks(scheme_of(model) or "seed")
    responder = _responder(model, config)
    _, summary = run_behaviour(responder, atts, samples=samples, seed=seed)
    _print_summary(f"{responder.name}: correct action", summary["overall"])
    for k, s in summary["by_expected"].items():
        _print_summary(f" expected {k}:", s)
    if json_out:
        write_json(json_out, summary)


def _eval_texts(data: str, limit: int) -> list[str]:
    from prealign.data import read_texts

    p = Path(data)
    if not p.exists():
        raise PrealignError(f"--data {data}: not found")
    texts = read_texts(p, limit)
    if not texts:
        raise PrealignError(f"--data {data}: no documents")
    return texts


@eval_app.command("humans")
def humans(
    model: str = typer.Option(..., "--model"),
    data: str = typer.Option(..., "--data", help="Held-out tagged documents (Parquet shards, .jsonl or .txt)."),
    docs: int = typer.Option(300, "--docs"),
    items: int = typer.Option(100, "--items", help="Next-sentence items."),
    passages: int = typer.Option(200, "--passages", help="Human-mode passages scored for the loss."),
    also_in: Optional[str] = typer.Option(None, "--also-in", help="Another rendering of the same scenarios (e.g. the mle eval split): keep only passages found there verbatim."),
    seed: int = typer.Option(0, "--seed"),
    json_out: Optional[str] = typer.Option(None, "--json"),
) -> None:
    """Loss (bits/char) on held-out human-mode text and next-sentence accuracy."""
    from prealign._util import write_json
    from prealign.model import load_model
    from prealign.evals.humans import evaluate_humans
    from prealign.evals.metrics import fmt_rate
    from prealign.tokenizer import scheme_of

    m, tok = load_model(model)
    res = evaluate_humans(m, tok, _eval_texts(data, docs), scheme=scheme_of(model) or "seed", n_items=items,
                          max_passages=passages, seed=seed,
                          also_in=_eval_texts(also_in, 10**9) if also_in else None)
    print(f"human-mode text: {res['loss']['bits_per_char']:.4f} bits/char over {res['loss']['n_chars']} chars")
    if "next_action" in res:
        print(f"next sentence:   {fmt_rate(res['next_action']['accuracy'])} (chance {100 * res['next_action']['chance']:.0f}%)")
    if json_out:
        write_json(json_out, res)


@eval_app.command("probes")
def probes(
    model: str = typer.Option(..., "--model"),
    data: str = typer.Option(..., "--data", help="Tagged documents (not the training data)."),
    docs: int = typer.Option(80, "--docs"),
    k: int = typer.Option(8, "--k", help="Transition within the next k tokens."),
    seed: int = typer.Option(0, "--seed"),
    plot: Optional[str] = typer.Option(None, "--plot", help="Write the per-layer plot (PNG) here."),
    json_out: Optional[str] = typer.Option(None, "--json"),
) -> None:
    """Per-layer logistic-regression probes: token mode and upcoming mode transition."""
    from prealign._util import write_json
    from prealign.model import load_model
    from prealign.probes.survey import plot_probes, probe_model
    from prealign.tokenizer import scheme_of

    m, tok = load_model(model)
    res = probe_model(m, tok, _eval_texts(data, docs), scheme=scheme_of(model) or "seed", k=k, seed=seed)
    f = lambda x: "  –  " if x is None else f"{x:.3f}"  # noqa: E731
    print("layer  mode-acc  mode-auroc  trans-acc  trans-auroc")
    for a, b in zip(res["mode"], res["transition"]):
        print(f"{a['layer']:>5}  {f(a['accuracy']):>8}  {f(a['auroc']):>10}  {f(b['accuracy']):>9}  {f(b['auroc']):>11}")
    if plot:
        plot_probes(res, plot)
    if json_out:
        write_json(json_out, res)


@eval_app.command("grammar")
def grammar(
    model: str = typer.Option(..., "--model", help="Tagged model directory."),
    samples: int = typer.Option(300, "--samples", help="Free samples from BOS."),
    max_new_tokens: int = typer.Option(1024, "--max-new-tokens", help="A sample that has not ended by then is incomplete."),
    temperature: float = typer.Option(1.0, "--temperature"),
    seed: int = O.SEED,
    json_out: Optional[str] = typer.Option(None, "--json", help="Write the figures (and a few failing samples) as JSON here."),
) -> None:
    """Did a tagged model learn its grammar? Lint-clean rate of complete free samples (no lock, no prompt)."""
    from prealign._util import write_json
    from prealign.evals.grammar import free_sample_lint
    from prealign.evals.metrics import fmt_rate
    from prealign.model import load_model

    m, tok = load_model(model)
    res = free_sample_lint(m, tok, samples=samples, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    print(f"lint-clean: {fmt_rate(res['lint_clean'])} of complete samples ({res['complete']}/{res['samples']} complete)")
    print(f"  within the {res['context']}-token context: {fmt_rate(res['within_context'])}; beyond: {fmt_rate(res['beyond_context'])}")
    print("  by language: " + "; ".join(f"{lg} {fmt_rate(r)}" for lg, r in res["by_language"].items()))
    print(f"  problems by kind: {res['problems_by_code']}")
    if json_out:
        write_json(json_out, res)


@eval_app.command("ensemble")
def ensemble(
    outcomes: List[str] = typer.Argument(..., help="Outcome JSONL files (from `eval redteam --outcomes`), one per model."),
    json_out: Optional[str] = typer.Option(None, "--json"),
) -> None:
    """Majority vote and any-veto over several models' outcomes, against the independence prediction."""
    from prealign._util import iter_jsonl, write_json
    from prealign.evals.ensemble import ensemble_from_outcomes
    from prealign.evals.metrics import fmt_rate

    per = {str(p): [r for _, r in iter_jsonl(p)] for p in outcomes}
    res = ensemble_from_outcomes(per)
    for name, r in res["models"].items():
        print(f"  {name}: {fmt_rate(r)}")
    print(f"majority: {fmt_rate(res['majority'])}; independent prediction {100 * res['majority']['predicted_independent']:.2f}%")
    print(f"any-veto: {fmt_rate(res['any_veto'])}; independent prediction {100 * res['any_veto']['predicted_independent']:.2f}%")
    print(f"mean error correlation: {res['error_correlation']['mean']}")
    if json_out:
        write_json(json_out, res)


@eval_app.command("diff")
def diff(
    a: str = typer.Option(..., "--a", help="First model directory."),
    b: str = typer.Option(..., "--b", help="Second model directory (same tokenizer)."),
    texts: str = typer.Option(..., "--texts", help="Texts to read (.txt, .jsonl, .parquet or a shard directory)."),
    docs: int = typer.Option(50, "--docs"),
    top: int = typer.Option(20, "--top"),
    json_out: Optional[str] = typer.Option(None, "--json"),
) -> None:
    """Tokens where two models' log-probabilities differ most."""
    from prealign._util import write_json
    from prealign.model import load_model
    from prealign.evals.diff import model_diff

    ma, ta = load_model(a)
    mb, tb = load_model(b)
    res = model_diff(ma, mb, ta, _eval_texts(texts, docs), top=top, tokenizer_b=tb)
    print(f"mean log p per token: a {res['mean_logp_a']:.4f}, b {res['mean_logp_b']:.4f} over {res['n_tokens']} tokens")
    for r in res["top"]:
        print(f"{r['diff']:+8.3f}  text {r['text']:>3} pos {r['position']:>4}  …{r['context']!r} → {r['token']!r}")
    if json_out:
        write_json(json_out, res)


def experiment(
    plan: str = typer.Option("quick", "--plan", help="A plan: smoke | quick | standard | sweep | gpu (prealign.experiment.PLANS)."),
    out: str = typer.Option(..., "--out", help="Experiment directory (a rerun resumes it)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a plan field: --set train_tokens=3000000 (repeatable)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads."),
) -> None:
    """Generate corpora, train every model on the same budget, check they learnt their world, evaluate all, write results.json + report."""
    from prealign.experiment import get_plan, parse_overrides, run_experiment

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    res = run_experiment(get_plan(plan, **parse_overrides(set_ or [])), out, log=log, threads=threads)
    print(f"report: {Path(res).with_name('report.html')}")


def report(
    results: str = typer.Argument(..., help="results.json of an experiment."),
    out: Optional[str] = typer.Option(None, "--out", help="HTML file (default: report.html beside the results)."),
    markdown: bool = typer.Option(False, "--markdown", help="Also print the headline tables and goals as Markdown."),
) -> None:
    """Render the HTML report (tables with intervals, plots, transcripts, commands) from results.json."""
    from prealign._util import read_json
    from prealign.report import markdown_summary, write_report

    path = write_report(results, out)
    if markdown:
        print(markdown_summary(read_json(results)))
    print(f"report: {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
    app.command("experiment")(experiment)
    app.command("report")(report)
