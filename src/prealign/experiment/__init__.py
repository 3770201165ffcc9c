"""The experiment that runs the whole method and its baselines on the same world, and the plans
it runs.

    prealign experiment --plan quick --out runs/demo
    prealign report runs/demo/results.json

Modules: `plans` (plans and rows, as data) and `run` (the resumable steps and `results.json`).
"""

from prealign.experiment.plans import DEFAULT_ROWS, MODELS, PLANS, ROWS, SUITES, Plan, Row, get_plan, register_row
from prealign.experiment.run import RESULTS_VERSION, assemble_results, run_experiment

__all__ = ["DEFAULT_ROWS", "MODELS", "PLANS", "RESULTS_VERSION", "ROWS", "SUITES", "Plan", "Row", "assemble_results",
           "get_plan", "register_row", "run_experiment"]
