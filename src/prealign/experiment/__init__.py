"""The experiment that runs the whole method and its baselines on the same world, with equal
budgets and several seeds, checks that the models learnt their world, and writes one
`results.json` the report is made from.

    prealign experiment --plan quick --out runs/demo
    prealign experiment --plan standard --out runs/standard
    prealign experiment --plan sweep --out runs/sweep
    prealign report runs/demo/results.json

Modules: `plans` (plans, models, rows: data), `run` (the resumable steps, the sweep),
`diagnostics` (did the models learn their world?), `results` (results.json).
"""

from prealign.experiment.plans import (
    CORPORA,
    DECIDING_ROWS,
    DEFAULT_ROWS,
    MODELS,
    PLANS,
    ROWS,
    SUITES,
    CorpusSpec,
    ModelSpec,
    Plan,
    Row,
    get_plan,
    parse_overrides,
    register_corpus,
    register_model,
    register_row,
)
from prealign.experiment.results import RESULTS_VERSION, assemble_results, assemble_sweep
from prealign.experiment.run import run_experiment, run_sweep

__all__ = [
    "CORPORA", "DECIDING_ROWS", "DEFAULT_ROWS", "MODELS", "PLANS", "RESULTS_VERSION", "ROWS", "SUITES", "CorpusSpec",
    "ModelSpec", "Plan", "Row", "assemble_results", "assemble_sweep", "get_plan", "parse_overrides", "register_corpus",
    "register_model", "register_row", "run_experiment", "run_sweep",
]
