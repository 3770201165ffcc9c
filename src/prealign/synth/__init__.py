"""LLM-written corpora: client, prompts, review passes, ledger and cost model, transform, executors.

    prealign synth render --scenarios scenarios.jsonl --endpoint URL --model NAME --out runs/synth
    prealign cost --ledger runs/synth

Modules: `client` (OpenAI-compatible chat client, cache, retries), `templates` (prompts),
`plan` (review plans), `passes` (review passes over one document), `transform` (human text and
gold documents in), `ledger` and `cost` (what a run paid, what a corpus costs), `rank` (one rank:
items, first step, review, the rank's files), `run` (the run: resume checks, the local executor,
the final summary) and `ray_runner` (the Ray executor). See docs/synth.md. Public names are
re-exported here.
"""

from prealign.synth.client import ChatClient, ClientConfig, Completion, RequestFailed, ResponseCache
from prealign.synth.cost import CostConfig, ledger_cost, seed_cost
from prealign.synth.ledger import ledger_totals, read_ledger
from prealign.synth.passes import Doc, run_plan
from prealign.synth.plan import ReviewPlan, load_plan, plan_from_dict
from prealign.synth.rank import SynthConfig
from prealign.synth.run import run_synth
from prealign.synth.templates import load_template, neutralise_tags

__all__ = [
    "ChatClient", "ClientConfig", "Completion", "RequestFailed", "ResponseCache",
    "CostConfig", "ledger_cost", "seed_cost", "read_ledger", "ledger_totals", "Doc", "run_plan",
    "ReviewPlan", "load_plan", "plan_from_dict", "SynthConfig", "run_synth", "load_template", "neutralise_tags",
]
