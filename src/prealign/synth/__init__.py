"""LLM-written corpora: client, prompts, review passes, ledger and cost model, transform, Ray runner.

    prealign synth render --scenarios scenarios.jsonl --endpoint URL --model NAME --out runs/synth
    prealign cost --ledger runs/synth

See docs/synth.md. Public names are re-exported here; internals live in the submodules.
"""

from prealign.synth.client import ChatClient, ClientConfig, Completion, RequestFailed, ResponseCache
from prealign.synth.cost import CostConfig, ledger_cost, seed_cost
from prealign.synth.ledger import read_ledger, summarise
from prealign.synth.passes import Doc, run_plan
from prealign.synth.plan import Plan, load_plan, plan_from_dict
from prealign.synth.render import SynthConfig, run_synth
from prealign.synth.templates import load_template, neutralise_tags

__all__ = [
    "ChatClient", "ClientConfig", "Completion", "RequestFailed", "ResponseCache",
    "CostConfig", "ledger_cost", "seed_cost", "read_ledger", "summarise", "Doc", "run_plan",
    "Plan", "load_plan", "plan_from_dict", "SynthConfig", "run_synth", "load_template", "neutralise_tags",
]
