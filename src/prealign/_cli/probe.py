"""CLI verbs for the probe guard (registered by prealign.cli): `prealign probe train|show`.

    prealign probe train --model runs/demo/models/tagged --data runs/demo/data/calib
    prealign probe train --model runs/demo/models/tagged            # renders the world's calib split
    prealign probe train --model M --rule-kinds window --windows 4,8  # one rule family, its lengths
    prealign probe show --model runs/demo/models/tagged [--json]

Parses arguments, builds a `ProbeConfig`, calls `prealign.probes.calibrate_and_save` or
`prealign.probes.Probe.load`. No logic of its own.
"""

from __future__ import annotations

import json
from typing import Optional

import typer


def _print_summary(s: dict, where: str) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    ch = s.get("chosen") or {}
    con.print(f"[bold]probe guard[/bold] {where}: layer {s['layer']} ({s['layer_name']}), {s['guard_rule']}")
    pct = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
    if ch:
        lat, lead = ch.get("median_latency"), ch.get("median_lead")
        con.print(f"calibration: benign fire rate {pct(ch['benign_fire_rate'])} (generated replies {pct(ch.get('reply_fire_rate'))}, "
                  f"document replies {pct(ch.get('doc_fire_rate'))}); drift caught {pct(ch['catch_rate'])} "
                  f"({s.get('drift_basis') or 'drift'}; generated drift {pct(ch.get('generated_catch_rate', ch.get('leak_catch_rate')))} "
                  f"of {ch.get('n_generated_drift', ch.get('n_leaks', 0))} caught before it starts, median lead "
                  f"{lead if lead is not None else '-'} tokens; splices {pct(ch.get('splice_catch_rate'))}, median "
                  f"{lat if lat is not None else '-'} tokens after the splice); constraint met: {s.get('target_met')}")
        con.print(f"rule: {s.get('rule')}")
    by_kind = s.get("calibration") or {}
    if by_kind:
        t = Table("calibration unit", "measure", "rate", "95% interval", "count")
        for kind, r in by_kind.items():
            t.add_row(kind, r["measure"], pct(r.get("value")), f"[{r['lo']:.1%}, {r['hi']:.1%}]", f"{r['k']}/{r['n']}")
        con.print(t)
    if s.get("layers"):
        t = Table("layer", "name", "accuracy", "majority", "guard AUROC", *[f"recall {c}" for c in s["classes"]])
        for r in s["layers"]:
            rec = r.get("recall") or {}
            fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            t.add_row(str(r["layer"]), str(r.get("name", "")), fmt(r.get("accuracy")), fmt(r.get("majority")),
                      fmt(r.get("guard_auroc")), *[fmt(rec.get(c)) for c in s["classes"]])
        con.print(t)
    con.print(f"documents: {s.get('n_docs')}, units: {s.get('n_units')}, data hash: {s.get('data_hash')}")


def _ints(text: Optional[str], name: str) -> Optional[tuple]:
    from prealign.errors import PrealignError

    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise PrealignError(f"{name} must be comma-separated integers, got {text!r}") from None


def probe_train(
    model: str = typer.Option(..., "--model", help="Tagged model directory; the probe is saved in its probe/."),
    data: Optional[str] = typer.Option(None, "--data", help="Calibration-split documents (Parquet shards, .jsonl, text). Default: render the world's calib split."),
    max_docs: int = typer.Option(400, "--max-docs", help="Documents read (split into probe-fitting and calibration parts)."),
    rule: str = typer.Option("fire_budget", "--rule", help="fire_budget (most drift caught within a benign fire budget) | catch_target."),
    max_benign_fire: float = typer.Option(0.02, "--max-benign-fire", help="fire_budget: largest benign fire rate allowed."),
    target_catch: float = typer.Option(0.9, "--target-catch", help="catch_target: share of calibration drift the guard must catch."),
    calib_replies: int = typer.Option(300, "--calib-replies", help="Replies generated to world calib-split requests (0: documents only)."),
    rule_kinds: str = typer.Option("run,window", "--rule-kinds", help="Rule families compared: run (k consecutive tokens over the threshold), window (mean over the last w tokens over it)."),
    ks: Optional[str] = typer.Option(None, "--ks", help="Run lengths k tried, comma-separated (default 1,2,3,4,5,6,8)."),
    windows: Optional[str] = typer.Option(None, "--windows", help="Window lengths w tried, comma-separated (default 4,8,16)."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Fix the probe layer (0 = embeddings)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Fix the threshold instead of calibrating it."),
    k: Optional[int] = typer.Option(None, "--k", help="Fix the run rule's length (alone, it also fixes the rule to run)."),
    window: Optional[int] = typer.Option(None, "--window", help="Fix the window rule's length (alone, it also fixes the rule to window)."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train per-layer mode probes on a calibration split and calibrate the guard (layer, rule, threshold, length)."""
    from prealign.probes import ProbeConfig, calibrate_and_save, summary

    extra = {}
    if _ints(ks, "--ks") is not None:
        extra["ks"] = _ints(ks, "--ks")
    if _ints(windows, "--windows") is not None:
        extra["windows"] = _ints(windows, "--windows")
    kinds = tuple(x.strip() for x in rule_kinds.split(",") if x.strip())
    cfg = ProbeConfig(max_docs=max_docs, rule=rule, max_benign_fire=max_benign_fire, target_catch=target_catch,
                      calib_replies=calib_replies, rule_kinds=kinds, layer=layer, threshold=threshold, k=k, window=window,
                      seed=seed, **extra)
    probe = calibrate_and_save(model, data, cfg, progress=progress)
    s = summary(probe)
    if as_json:
        typer.echo(json.dumps(s, indent=2))
    else:
        _print_summary(s, f"saved in {model}/probe")


def probe_show(
    model: str = typer.Option(..., "--model", help="Model directory holding probe/ (or a probe directory)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Show a saved probe: the guard's rule in words, the rule that chose it, calibration figures, per-layer accuracy."""
    from prealign.probes import Probe, summary

    s = summary(Probe.load(model))
    if as_json:
        typer.echo(json.dumps(s, indent=2))
    else:
        _print_summary(s, model)


def register(app: typer.Typer) -> None:
    probe = typer.Typer(help="The probe guard: train and inspect the linear mode probe the lock consults.", no_args_is_help=True)
    probe.command("train")(probe_train)
    probe.command("show")(probe_show)
    app.add_typer(probe, name="probe")
