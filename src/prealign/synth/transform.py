"""Transform existing human text (AI commentary added, the text kept human) and import gold documents.

    prealign synth transform --in books/*.txt --endpoint URL --model NAME --out runs/transformed
    prealign synth import --in gold.jsonl --out runs/gold

Transform: each source record (a text file, a JSONL line, a Parquet row) is cut into chunks at
paragraph breaks of at most `chunk_chars`. The chunk is untrusted: tag-like strings in it are
neutralised (prealign.synth.templates.neutralise_tags) before it enters the prompt, as data in a
fence. The answer is linted like any LLM output, and must keep the source: at least
`min_fidelity` of the chunk's words must reappear in the answer's human-mode text, so a model that
rewrites or drops the human text is caught. Import: documents written by people, linted, with
provenance `human` (no LLM).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterator

from prealign.errors import PrealignError
from prealign.modes import get_scheme
from prealign.synth.templates import fence, load_template, neutralise_tags, strip_fences


def chunk_text(text: str, chunk_chars: int) -> list[str]:
    """Chunks of at most `chunk_chars` cut at blank lines (else at line ends, else hard)."""
    if chunk_chars < 1:
        raise PrealignError(f"chunk_chars must be >= 1, got {chunk_chars}")
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    pieces: list[str] = []
    for p in paras:
        while len(p) > chunk_chars:
            cut = p.rfind("\n", 0, chunk_chars)
            if cut <= 0:
                cut = p.rfind(" ", 0, chunk_chars)
            if cut <= 0:
                cut = chunk_chars
            pieces.append(p[:cut].strip())
            p = p[cut:].strip()
        if p:
            pieces.append(p)
    chunks, cur = [], ""
    for p in pieces:
        if cur and len(cur) + 2 + len(p) > chunk_chars:
            chunks.append(cur)
            cur = p
        else:
            cur = f"{cur}\n\n{p}" if cur else p
    if cur:
        chunks.append(cur)
    return chunks


def _expand(inputs: tuple[str, ...]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in (".txt", ".jsonl", ".parquet", ".md")
                           and "rejected" not in f.parts)
            if not found:
                raise PrealignError(f"{p}: no .txt, .md, .jsonl or .parquet files")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise PrealignError(f"{p}: no such file or directory")
    return files


def _records(inputs: tuple[str, ...], field: str) -> Iterator[tuple[str, dict]]:
    """(where, record) for every source record; a record has at least `text`."""
    from prealign.data import iter_parquet_rows, iter_texts
    from prealign._util import iter_jsonl

    for f in _expand(inputs):
        suffix = f.suffix.lower()
        if suffix == ".parquet":
            for row, rec in iter_parquet_rows(f):
                if not isinstance(rec.get(field), str):
                    raise PrealignError(f"{f}:{row + 1}: no text column {field!r} (columns: {', '.join(rec)})")
                yield f"{f}:{row + 1}", {**rec, "text": rec[field]}
        elif suffix in (".jsonl", ".json"):
            for n, rec in iter_jsonl(f):
                if not isinstance(rec.get(field), str):
                    raise PrealignError(f"{f}:{n}: record has no text field {field!r} (keys: {', '.join(rec) or 'none'})")
                yield f"{f}:{n}", {**rec, "text": rec[field]}
        else:
            for n, text in iter_texts(f):
                yield f"{f}:{n}", {"text": text}


def transform_items(inputs: tuple[str, ...], field: str, chunk_chars: int) -> list[dict]:
    items = []
    for where, rec in _records(inputs, field):
        for i, chunk in enumerate(chunk_text(rec["text"], chunk_chars)):
            items.append({"id": f"{where}#{i}", "source_id": where, "text": chunk, "where": where})
    if not items:
        raise PrealignError(f"{', '.join(inputs)}: no text to transform")
    return items


def document_items(inputs: tuple[str, ...], field: str, variant: str | None, scheme: str | None = None) -> list[dict]:
    """Documents to review or import. `id`, `scenario_id`, `variant` and `provenance` are kept; a
    `scenario` column (world shards carry one, as JSON) becomes the ground truth for canaries; a
    `scheme` column must match the run's scheme."""
    import json

    items, seen = [], set()
    for where, rec in _records(inputs, field):
        doc_id = str(rec.get("id") or where)
        if doc_id in seen:
            raise PrealignError(f"{where}: document id {doc_id!r} repeats an earlier one")
        seen.add(doc_id)
        if scheme and rec.get("scheme") and rec["scheme"] != scheme:
            raise PrealignError(f"{where}: document is in scheme {rec['scheme']!r}, the run uses {scheme!r} (pass --scheme {rec['scheme']})")
        prov = _json_field(rec.get("provenance"))
        if isinstance(prov, dict):
            prov = [prov]
        scenario = _json_field(rec.get("scenario"))
        items.append({"id": doc_id, "source_id": str(rec.get("scenario_id") or ""), "text": rec["text"], "where": where,
                      "variant": variant or rec.get("variant") or "reviewed",
                      "provenance": prov if isinstance(prov, list) else [],
                      **({"scenario": scenario} if isinstance(scenario, dict) else {})})
    if not items:
        raise PrealignError(f"{', '.join(inputs)}: no documents")
    return items


def _json_field(value):
    import json

    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return {"note": value}
    return value


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def fidelity(source: str, output: str, scheme: str) -> float:
    """Share of the source's words (as a multiset) found in the output's human-mode text."""
    from prealign.segments import segments_of

    sch = get_scheme(scheme)
    human = " ".join(output[s.start:s.end] for s in segments_of(output, sch) if s.mode in sch.human_modes and s.mode not in sch.quoted_modes)
    want, have = Counter(_words(source)), Counter(_words(human))
    total = sum(want.values())
    return 1.0 if total == 0 else sum(min(n, have[w]) for w, n in want.items()) / total


async def transform_chunk(cfg, item: dict, doc, ctx, rt) -> None:
    """Ask for the chunk with AI commentary; check it lints (later) and keeps the source text."""
    from prealign.segments import lint_text

    t = load_template("transform", cfg.prompt_dir)
    source = neutralise_tags(item["text"])
    messages = t.messages(cfg.scheme, text=fence(source))
    c = await rt.client().complete(messages, pass_name="transform", meta={"rank": ctx.rank, "doc_id": doc.id})
    doc.text, doc.text_tokens = strip_fences(c.text), c.completion_tokens
    doc.source_text, doc.min_fidelity = source, cfg.min_fidelity
    entry = {"pass": "transform", "model": c.model, **t.provenance(), "source": item["where"],
             "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens, "cached": c.cached,
             "seconds": c.seconds, "request_id": c.request_id}
    if not any(p.severity == "error" for p in lint_text(doc.text, cfg.scheme)):
        f = fidelity(source, doc.text, cfg.scheme)
        entry["fidelity"] = round(f, 4)
        if f < cfg.min_fidelity:
            doc.failures.append(f"transform: only {f:.0%} of the source's words kept as human text (< {cfg.min_fidelity:.0%}) [fidelity]")
    doc.provenance.append(entry)
