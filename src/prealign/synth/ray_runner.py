"""Run a synth job's ranks as Ray Data `map_batches` tasks: the same rank function, many workers.

    pip install 'prealign[ray]'
    prealign synth render --engine ray --workers 8 --scenarios s.jsonl --endpoint URL --model NAME --out /shared/runs/synth
    prealign synth render --engine ray --ray-address auto ...      # join a running cluster

Each pending rank is one row of a Ray dataset; a pool of `workers` actors (callable class
`_RankWorker`) runs `prealign.synth.rank.process_rank` on it with its own asyncio loop and
client, and writes the rank's shard, marker and ledger file itself, exactly as the local engine
does. So on a cluster `--out` must be a filesystem every node sees (NFS, a mounted bucket), and a
failed or killed job resumes from the finished ranks' markers. This module is an executor only:
it knows the rank step (prealign.synth.rank), never the run that calls it (prealign.synth.run).
Ray is imported only here, inside functions: the core never needs it.
"""

from __future__ import annotations

import asyncio
import json

from prealign.errors import PrealignError, require_extra
from prealign.synth.rank import Runtime, SynthConfig, config_from_mapping, config_to_mapping, process_rank, rank_items


class _RankWorker:
    """A Ray actor: builds the config once, then processes the ranks it is given (each row holds
    its rank's items, so a worker never loads the whole input)."""

    def __init__(self, config: dict):
        self.cfg = config_from_mapping(config)
        self.plan = self.cfg.resolved_plan()

    def __call__(self, batch: dict) -> dict:
        kept = []
        for rank, items_json in zip(batch["rank"], batch["items"]):
            rank, items = int(rank), json.loads(items_json)

            async def go() -> dict:
                rt = Runtime(self.cfg)
                try:
                    return await process_rank(self.cfg, self.plan, rank, items, rt)
                finally:
                    await rt.aclose()

            kept.append(asyncio.run(go())["kept"])
        return {"rank": list(batch["rank"]), "kept": kept}


def run_ranks_ray(cfg: SynthConfig, pending: list[int], items: list[dict]) -> list[dict]:
    """Process `pending` ranks of `items` on Ray (a local instance unless `cfg.ray_address` names
    a cluster)."""
    if not pending:
        return []
    ray = require_extra("ray", "ray")
    require_extra("ray.data", "ray")
    started = False
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": False}
        if cfg.ray_address:
            kwargs["address"] = cfg.ray_address
        else:
            kwargs["num_cpus"] = max(1, cfg.workers)
        ray.init(**kwargs)
        started = True
    try:
        rows = [{"rank": r, "items": json.dumps(rank_items(cfg, items, r), ensure_ascii=False)} for r in pending]
        ds = ray.data.from_items(rows, override_num_blocks=len(pending))
        out = ds.map_batches(_RankWorker, fn_constructor_kwargs={"config": config_to_mapping(cfg)},
                             batch_size=1, concurrency=max(1, min(cfg.workers, len(pending))), num_cpus=1)
        try:
            return out.take_all()
        except Exception as e:  # Ray wraps the worker's error in its own types
            raise PrealignError(f"a Ray worker failed ({type(e).__name__}: {str(e).splitlines()[0][:300]}); "
                                "finished ranks are kept: re-run the same command to resume") from None
    finally:
        if started:
            ray.shutdown()
