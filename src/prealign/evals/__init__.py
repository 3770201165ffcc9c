"""Evaluations: red-team, behaviour, understanding of humans, probes, ensembles, model diff, and
the experiment that runs them all.

    prealign eval redteam --model runs/demo/models/tagged --attacks world-heldout
    prealign experiment --plan quick --out runs/demo

Submodules are imported on use (torch and scikit-learn load only when needed).
"""

from prealign.evals.metrics import METRICS, Rate, get_metric, register_metric, summarise, wilson

__all__ = ["METRICS", "Rate", "get_metric", "register_metric", "summarise", "wilson"]
