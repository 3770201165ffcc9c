"""The synth pipeline on a local Ray instance: the same rank function as Ray Data map_batches.

    .venv/bin/pytest -q tests/test_synth_ray.py      # skipped unless `pip install 'prealign[ray]'`

Ray starts a local instance (about 10 s on 2 cores), so this is one test that checks everything:
every scenario ends up exactly once, shards lint, the ledger equals what the server billed, and a
second run with every rank finished does no work.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray.data")
pytestmark = pytest.mark.ray

sys.path.insert(0, str(Path(__file__).parent))
from fault_server import FaultServer  # noqa: E402

from prealign.data import load_records  # noqa: E402
from prealign.segments import lint_text  # noqa: E402
from prealign.synth.client import ClientConfig  # noqa: E402
from prealign.synth.ledger import read_ledger  # noqa: E402
from prealign.synth.rank import SynthConfig  # noqa: E402
from prealign.synth.run import run_synth  # noqa: E402


def test_ray_engine_matches_local_semantics(tmp_path):
    scen = tmp_path / "s.jsonl"
    scen.write_text("\n".join(json.dumps({"id": f"r{i}", "hazards": [{"id": "h", "canary": f"cn-{i}"}]}) for i in range(9)) + "\n")
    with FaultServer({"429": 0.1, "cut": 0.05}, seed=2) as srv:
        client = ClientConfig(endpoint=srv.url, model="tiny", concurrency=4, timeout_s=5, backoff_base_s=0.001, backoff_max_s=0.01)
        cfg = SynthConfig("render", (str(scen),), str(tmp_path / "out"), client, shard_size=2, engine="ray", workers=2)
        s = run_synth(cfg)
        assert s["kept"] == 9 and s["ranks"] == 5
        paid = [e for e in read_ledger(tmp_path / "out") if not e["cached"]]
        assert sum(e["prompt_tokens"] for e in paid) == srv.billed_prompt_tokens
        assert len(paid) == srv.billed_requests and set(srv.billed_by_key.values()) == {1}
        before = srv.requests
        assert run_synth(cfg)["kept"] == 9 and srv.requests == before  # all ranks done: nothing re-run
    rows = load_records(tmp_path / "out")
    assert sorted(r["scenario_id"] for r in rows) == sorted(f"r{i}" for i in range(9))
    assert all(not lint_text(r["text"], "seed") for r in rows)
