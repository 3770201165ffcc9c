"""The whole synth pipeline against `prealign serve` with a tiny random model on 127.0.0.1.

    .venv/bin/pytest -q tests/test_synth_e2e.py

The model is a randomly initialised 2-layer Llama, so its answers are garbage: documents without
AI text, grades that are not JSON. The pipeline must still account for everything: every scenario
ends up exactly once (kept, rejected or escalated), kept shards lint, each document's provenance
adds up to exactly the ledger, and the ledger's tokens are the server's own `usage` figures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fastapi  # noqa: F401  (prealign serve runs on it)
import pyarrow.parquet as pq
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).parents[1]))
from tests._lock_support import make_tokenizer, save_model_dir  # noqa: E402

from prealign.cli import main  # noqa: E402
from prealign.data import load_records  # noqa: E402
from prealign.segments import lint_text  # noqa: E402
from prealign.synth.client import ClientConfig  # noqa: E402
from prealign.synth.ledger import read_ledger  # noqa: E402
from prealign.synth.plan import plan_from_dict  # noqa: E402
from prealign.synth.rank import SynthConfig  # noqa: E402
from prealign.synth.run import run_synth  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from prealign.serve import ServeConfig, run_in_thread

    root = tmp_path_factory.mktemp("model")
    tok = make_tokenizer(root / "tok")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=16384, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model_dir = save_model_dir(root / "model", LlamaForCausalLM(cfg).eval(), tok)
    with run_in_thread(str(model_dir), config=ServeConfig(model_name="tiny", max_tokens_limit=64)) as h:
        yield h


def test_render_and_review_against_prealign_serve(served, tmp_path, capsys):
    scen = tmp_path / "s.jsonl"
    scen.write_text("\n".join(json.dumps({"id": f"e{i}", "kind": "question", "hazards": [{"id": "h", "canary": f"zz-{i}"}]})
                              for i in range(4)) + "\n")
    plan = plan_from_dict({"name": "e2e", "passes": ["lint", "canary", {"grade": {"max_tokens": 16}},
                                                     "filter", {"edit": {"max_tokens": 16}},
                                                     {"crosscheck": {"max_tokens": 16}}]})
    client = ClientConfig(endpoint=served.url, model="tiny", concurrency=4, timeout_s=60, max_tokens=24,
                          backoff_base_s=0.01, backoff_max_s=0.05)
    out = tmp_path / "out"
    s = run_synth(SynthConfig("render", (str(scen),), str(out), client, plan=plan, shard_size=2))
    assert s["kept"] + s["rejected"] + s["escalated"] == 4

    kept = load_records(out)
    rejected = [r for f in sorted((out / "rejected").glob("*.parquet")) for r in pq.read_table(f).to_pylist()] \
        if (out / "rejected").exists() else []
    escalated = [json.loads(x) for x in (out / "escalate.jsonl").read_text().splitlines() if x.strip()]
    ids = [r["id"] for r in kept + rejected + escalated]
    assert sorted(ids) == [f"e{i}:llm" for i in range(4)]
    assert all(not lint_text(r["text"], "seed") for r in kept)
    assert all(json.loads(r["failures"]) for r in rejected)  # every rejection says why

    # provenance of every document adds up to exactly the ledger
    ledger = read_ledger(out)
    prov = [p for r in kept + rejected for p in json.loads(r["provenance"])] + \
           [p for r in escalated for p in r["provenance"]]
    llm = [p for p in prov if "prompt_tokens" in p]
    assert sorted((p["pass"], p["prompt_tokens"], p["completion_tokens"]) for p in llm) == \
        sorted((e["pass"], e["prompt_tokens"], e["completion_tokens"]) for e in ledger)
    assert not any(e["usage_estimated"] for e in ledger)  # tokens are the server's own usage
    assert all(0 < e["completion_tokens"] <= 24 for e in ledger if e["pass"] == "render")

    # a re-run is free: every rank is done
    before = len(read_ledger(out))
    assert run_synth(SynthConfig("render", (str(scen),), str(out), client, plan=plan, shard_size=2))["kept"] == s["kept"]
    assert len(read_ledger(out)) == before

    rc = main(["cost", "--ledger", str(out), "--json"])
    assert rc == (0 if s["kept"] else 2)  # no kept document: no cost per kept token, one clear error


def test_review_with_garbage_grades(served, tmp_path):
    """Good documents, graded by a model that cannot write JSON: rejected for the grade, not lost."""
    from prealign.modes import Mode, get_scheme

    sch = get_scheme("seed")
    doc = f"Bera haggled.\n{sch.tag_between(Mode.HUMAN, Mode.AI).text}Bera wants a fair price.{sch.exit_ai_tag().text}\n"
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps({"id": f"d{i}", "text": doc + str(i)}) for i in range(3)) + "\n")
    plan = plan_from_dict({"name": "g", "passes": ["lint", {"grade": {"max_tokens": 16}}, "filter"]})
    client = ClientConfig(endpoint=served.url, model="tiny", concurrency=3, timeout_s=60, max_tokens=16)
    s = run_synth(SynthConfig("review", (str(src),), str(tmp_path / "out"), client, plan=plan))
    assert (s["kept"], s["rejected"]) == (0, 3) and s["reject_reasons"] == {"grade": 3}
    assert [e["pass"] for e in read_ledger(tmp_path / "out")] == ["grade"] * 3
