"""One rank of a synth run: its items, the first step (render / transform / as-is), the review
plan, and the rank's files. No executor lives here.

    from prealign.synth.rank import SynthConfig, Runtime, load_items, process_rank, rank_items

One run is a list of *items* (a scenario to render, a document to review, a chunk of human text
to transform, a gold document to import), cut into ranks of `shard_size` items in input order.
Each rank's documents go through the first step and then the review plan (prealign.synth.passes),
concurrently, under one client-wide limit on requests in flight. A finished rank writes, each
atomically, then its completion marker (prealign.data.write_marker):

    RUN/part-{rank:05d}.parquet        kept documents: id, scenario_id, text, labels, provenance,
                                       variant, scheme (labels and provenance are JSON strings)
    RUN/rejected/rejected-{rank}.parquet   documents that failed, with their reasons
    RUN/escalate/{rank}.jsonl          documents the reviewers disagreed on, for a person
    RUN/completions/{rank:05d}         the marker: counts and kept tokens of the rank
    RUN/ledger/rank-{rank}.jsonl       one line per request, written as it completes

The step knows nothing of who runs it, as datatrove keeps pipeline steps apart from executors:
prealign.synth.run drives ranks in one process (asyncio) and prealign.synth.ray_runner drives
the same `process_rank` as Ray tasks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from prealign._util import atomic_path, config_from_dict, iter_jsonl, write_jsonl
from prealign.data import part_path, write_marker
from prealign.errors import PrealignError
from prealign.modes import get_scheme
from prealign.synth.client import ChatClient, ClientConfig, estimate_tokens
from prealign.synth.ledger import LedgerWriter, ledger_entry
from prealign.synth.passes import Doc, PassContext, labels_of, run_plan, world_hazard
from prealign.synth.plan import LLM_PASSES, ReviewPlan, load_plan, plan_from_dict
from prealign.synth.templates import fence, load_template, neutralise_tags, strip_fences

KINDS = ("render", "review", "transform", "import")
COLUMNS = ("id", "scenario_id", "text", "labels", "provenance", "variant", "scheme")


@dataclass(frozen=True)
class SynthConfig:
    """One synth run. `inputs`: scenario JSONL (render), shards/JSONL (review, import), text
    files/JSONL/Parquet (transform). `client` is None only when the plan needs no LLM."""

    kind: str
    inputs: tuple[str, ...]
    out: str
    client: ClientConfig | None = None
    plan: ReviewPlan | None = None  # None: `default` for render/review/transform, `lint-only` for import
    scheme: str = "seed"
    shard_size: int = 64
    prompt_dir: str | None = None
    field: str = "text"  # text column/field for review, transform and import
    chunk_chars: int = 2000  # transform: chunk size
    min_fidelity: float = 0.9  # transform: share of the source's words kept in human text
    engine: str = "local"
    ray_address: str | None = None
    workers: int = 2  # ray: ranks processed at once
    progress: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PrealignError(f"unknown synth kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if not self.inputs:
            raise PrealignError(f"synth {self.kind}: no input given")
        if self.shard_size < 1:
            raise PrealignError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.engine not in ("local", "ray"):
            raise PrealignError(f"unknown engine {self.engine!r}; choose local or ray")
        if not 0.0 <= self.min_fidelity <= 1.0:
            raise PrealignError(f"min_fidelity must be within [0, 1], got {self.min_fidelity}")
        if self.workers < 1 or self.chunk_chars < 1:
            raise PrealignError(f"workers and chunk_chars must be >= 1 (got {self.workers}, {self.chunk_chars})")
        get_scheme(self.scheme)
        if self.client is None and (self.kind in ("render", "transform") or any(p.name in LLM_PASSES for p in self.resolved_plan().passes)):
            raise PrealignError(f"synth {self.kind} with plan {self.resolved_plan().name!r} needs an LLM: pass --endpoint and --model")

    def resolved_plan(self) -> ReviewPlan:
        if self.plan is not None:
            return self.plan
        return load_plan("lint-only" if self.kind == "import" else "default")

    def with_cache(self) -> "SynthConfig":
        """The client config with the run's own cache directory when none was given."""
        if self.client is None or self.client.cache_dir:
            return self
        return dataclasses.replace(self, client=dataclasses.replace(self.client, cache_dir=str(Path(self.out) / "cache")))


def config_from_mapping(data: dict) -> SynthConfig:
    """A SynthConfig from plain data (a run.json's config): nested client and plan rebuilt."""
    data = dict(data)
    if data.get("client") is not None:
        data["client"] = config_from_dict(ClientConfig, data["client"], where="config.client")
    if data.get("plan") is not None:
        data["plan"] = plan_from_dict(data["plan"], where="config.plan")
    data["inputs"] = tuple(data.get("inputs", ()))
    return config_from_dict(SynthConfig, data, where="synth config")


def config_to_mapping(cfg: SynthConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["plan"] = cfg.resolved_plan().to_dict()
    d["inputs"] = list(cfg.inputs)
    return d


# --- items ----------------------------------------------------------------------------------------


def load_items(cfg: SynthConfig) -> list[dict]:
    """The run's items in a fixed order (ranks are slices of this list)."""
    if cfg.kind == "render":
        return load_scenarios(cfg.inputs)
    from prealign.synth.transform import document_items, transform_items

    if cfg.kind == "transform":
        return transform_items(cfg.inputs, cfg.field, cfg.chunk_chars)
    return document_items(cfg.inputs, cfg.field, variant="human" if cfg.kind == "import" else None, scheme=cfg.scheme)


def load_scenarios(paths: tuple[str, ...]) -> list[dict]:
    """Scenario objects from JSONL files (as `prealign world --scenarios-only` writes them)."""
    items, seen = [], {}
    for path in paths:
        if Path(path).is_dir():
            raise PrealignError(f"{path}: a directory; --scenarios takes JSONL files (prealign world --scenarios-only --out FILE.jsonl)")
        for n, rec in iter_jsonl(path):
            sid = rec.get("id", rec.get("scenario_id"))
            if not isinstance(sid, (str, int)) or sid == "":
                raise PrealignError(f"{path}:{n}: scenario has no 'id' (keys: {', '.join(rec) or 'none'})")
            sid = str(sid)
            if sid in seen:
                raise PrealignError(f"{path}:{n}: scenario id {sid!r} repeats line {seen[sid]}")
            seen[sid] = f"{path}:{n}"
            items.append({"id": f"{sid}:llm", "source_id": sid, "scenario": rec})
    if not items:
        raise PrealignError(f"{', '.join(paths)}: no scenarios")
    return items


def n_ranks(cfg: SynthConfig, n_items: int) -> int:
    return max(1, math.ceil(n_items / cfg.shard_size))


def rank_items(cfg: SynthConfig, items: list[dict], rank: int) -> list[dict]:
    return items[rank * cfg.shard_size:(rank + 1) * cfg.shard_size]


# --- one rank -------------------------------------------------------------------------------------


class Runtime:
    """Clients (one per endpoint, shared by every rank of a process) and the ledger writer."""

    def __init__(self, cfg: SynthConfig):
        self.cfg = cfg
        self.ledger = LedgerWriter(cfg.out)
        self._clients: dict[str, ChatClient] = {}

    def _on_result(self, completion, pass_name: str, meta: dict) -> None:
        self.ledger.write(ledger_entry(completion, pass_name, meta))

    def client(self, endpoint: str | None = None, model: str | None = None) -> ChatClient:
        base = self.cfg.client
        if base is None:
            raise PrealignError("this plan needs an LLM: pass --endpoint and --model")
        ep = endpoint or base.endpoint
        if ep not in self._clients:
            self._clients[ep] = ChatClient(dataclasses.replace(base, endpoint=ep), on_result=self._on_result)
        return self._clients[ep]

    async def aclose(self) -> None:
        for c in self._clients.values():
            await c.aclose()
        self._clients.clear()
        self.ledger.close()


async def first_step(cfg: SynthConfig, item: dict, ctx: PassContext, rt: Runtime) -> Doc:
    """The document before review: rendered from a scenario, transformed, or taken as it is."""
    doc = Doc(id=item["id"], text=item.get("text", ""), scheme=cfg.scheme, source_id=item.get("source_id", ""),
              variant=item.get("variant") or ("llm" if cfg.kind in ("render", "transform") else "reviewed"),
              ground_truth=item.get("scenario"))
    if item.get("provenance"):
        doc.provenance += list(item["provenance"])
    if cfg.kind == "render":
        t = load_template("render", cfg.prompt_dir)
        scenario_json = json.dumps(scenario_for_prompt(item["scenario"]), ensure_ascii=False, indent=1, sort_keys=True)
        messages = t.messages(cfg.scheme, scenario=fence(neutralise_tags(scenario_json)))
        c = await rt.client().complete(messages, pass_name="render", meta={"rank": ctx.rank, "doc_id": doc.id})
        doc.text, doc.text_tokens = strip_fences(c.text), c.completion_tokens
        doc.provenance.append({"pass": "render", "model": c.model, **t.provenance(), "prompt_tokens": c.prompt_tokens,
                               "completion_tokens": c.completion_tokens, "cached": c.cached, "seconds": c.seconds, "request_id": c.request_id})
    elif cfg.kind == "transform":
        from prealign.synth.transform import transform_chunk

        await transform_chunk(cfg, item, doc, ctx, rt)
    else:
        doc.text_tokens = estimate_tokens(doc.text)
        doc.provenance.append({"pass": cfg.kind, "source": item.get("where", ""), "by": "human" if cfg.kind == "import" else "reviewed"})
    return doc


def scenario_for_prompt(scenario: dict) -> dict:
    """The scenario plus the facts of the world hazards it names (the writer must know them to
    let humans mention them, and to keep them out of AI text)."""
    ids: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("hazard_id"), str) and node["hazard_id"] not in ids:
                ids.append(node["hazard_id"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(scenario)
    facts = {h: world_hazard(h) for h in ids}
    facts = {k: v for k, v in facts.items() if v is not None}
    return {**scenario, "hazard_facts": facts} if facts else scenario


async def process_doc(cfg: SynthConfig, plan: ReviewPlan, item: dict, ctx: PassContext, rt: Runtime) -> Doc:
    doc = await first_step(cfg, item, ctx, rt)
    if doc.failures:
        doc.status = "rejected"
        return doc
    return await run_plan(plan, doc, ctx)


async def process_rank(cfg: SynthConfig, plan: ReviewPlan, rank: int, items: list[dict], rt: Runtime,
                       on_doc: Callable[[Doc], None] | None = None, window: asyncio.Semaphore | None = None,
                       started: asyncio.Event | None = None) -> dict:
    """Every document of one rank, concurrently; then the rank's files and its marker.

    `window` (shared by all ranks of a process) bounds the documents in flight: each document
    takes a slot before it starts, and `started` is set once all of this rank's documents have
    one, so the next rank can start while this one finishes (no idle tail at rank boundaries).
    If any request fails after its retries, the other documents still finish (their answers are
    cached), no file of the rank is written, and the first error is raised: a re-run redoes only
    what is missing.
    """
    ctx = PassContext(clients=rt.client, rank=rank, prompt_dir=cfg.prompt_dir)

    async def one(item: dict) -> Doc:
        try:
            doc = await process_doc(cfg, plan, item, ctx, rt)
        finally:
            if window is not None:
                window.release()
        if on_doc:
            on_doc(doc)
        return doc

    tasks = []
    try:
        for it in items:
            if window is not None:
                await window.acquire()
            tasks.append(asyncio.ensure_future(one(it)))
    finally:
        if started is not None:
            started.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for e in errors:
            if not isinstance(e, Exception):
                raise e
        raise errors[0]
    # Parquet and file writes off the event loop: requests of other ranks keep flowing.
    return await asyncio.to_thread(write_rank, cfg, rank, results)  # type: ignore[arg-type]


def _row(doc: Doc) -> dict:
    return {
        "id": doc.id,
        "scenario_id": doc.source_id,
        "text": doc.text,
        "labels": json.dumps(labels_of(doc) if doc.status == "kept" else {"grade": doc.grade}, ensure_ascii=False),
        "provenance": json.dumps(doc.provenance, ensure_ascii=False),
        "variant": doc.variant,
        "scheme": doc.scheme,
    }


def _write_table(path: Path, rows: list[dict], extra: tuple[str, ...] = ()) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(c, pa.string()) for c in COLUMNS + extra])
    table = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_rank(cfg: SynthConfig, rank: int, docs: list[Doc]) -> dict:
    out = Path(cfg.out)
    kept = [d for d in docs if d.status == "kept"]
    rejected = [d for d in docs if d.status == "rejected"]
    escalated = [d for d in docs if d.status == "escalated"]
    _write_table(part_path(out, rank), [_row(d) for d in kept])
    if rejected:
        _write_table(out / "rejected" / f"rejected-{rank:05d}.parquet",
                     [{**_row(d), "failures": json.dumps(d.failures, ensure_ascii=False)} for d in rejected], ("failures",))
    if escalated:
        write_jsonl(out / "escalate" / f"{rank:05d}.jsonl",
                    [{**_row(d), "labels": labels_of(d), "provenance": d.provenance, "reason": d.escalation,
                      "grade": d.grade, "crosscheck": d.crosscheck} for d in escalated])
    counts = {
        "records": len(kept), "kept": len(kept), "rejected": len(rejected), "escalated": len(escalated),
        "kept_tokens": sum(d.text_tokens for d in kept), "kept_chars": sum(len(d.text) for d in kept),
        "reject_reasons": dict(Counter(_reason_code(d.failures[0]) for d in rejected if d.failures)),
    }
    write_marker(out, rank, counts)
    return counts


def _reason_code(reason: str) -> str:
    head = reason.split(":", 1)[0]
    if "[" in reason and reason.endswith("]"):
        return f"{head}:{reason.rsplit('[', 1)[1][:-1]}"
    return head

