"""Review passes over one document: lint, canary, grade, filter, edit, crosscheck.

    prealign synth review --in runs/world/tagged --plan default --endpoint URL --model NAME --out runs/reviewed

A document (`Doc`) goes through a plan (prealign.synth.plan) in order. A pass that finds a
problem adds a failure reason; later passes skip a failed document, except `edit`, which asks
the LLM for a corrected version and re-runs every pass above it on the new text (up to
`max_rounds`). `crosscheck` asks a second reviewer; when the two disagree the document goes to
the escalate queue for a person instead of the corpus. Every pass appends a provenance entry
(pass, model, template version, tokens, cached) to the document; the client's ledger records
every request.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from prealign.modes import Mode, Scheme, get_scheme
from prealign.synth.plan import (PROPERTIES, CanaryPass, CrosscheckPass, EditPass, FilterPass, GradePass, LintPass,
                                 ReviewPlan)
from prealign.synth.templates import fence, load_template, strip_fences


@dataclass
class Doc:
    """A document in flight. `status` ends as "kept", "rejected" or "escalated"."""

    id: str
    text: str
    scheme: str
    source_id: str = ""  # scenario id, or the source file and record
    variant: str = "llm"
    ground_truth: dict | None = None  # the scenario (for canaries and the labels)
    provenance: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    grade: dict | None = None  # latest parsed grade: {property: score or None}
    crosscheck: dict | None = None
    text_tokens: int = 0  # tokens of the text as the writing model counted them
    status: str = "pending"
    escalation: str = ""
    source_text: str | None = None  # transform: the (neutralised) human text that must survive edits
    min_fidelity: float = 0.0


@dataclass
class PassContext:
    """What passes need: clients by (endpoint, model), the ledger metadata, the prompt directory."""

    clients: Any  # callable (endpoint | None, model | None) -> ChatClient
    rank: int = 0
    prompt_dir: str | None = None


# --- structural ---------------------------------------------------------------------------------


def lint_pass(spec: LintPass, doc: Doc) -> None:
    from prealign.segments import lint_text, segments_of

    problems = lint_text(doc.text, doc.scheme)
    errors = [p for p in problems if p.severity == "error" or spec.fail_on_warnings]
    entry: dict = {"pass": "lint", "problems": len(problems)}
    if errors:
        doc.failures += [f"lint: line {p.line} col {p.col}: {p.message} [{p.code}]" for p in errors[:20]]
    elif spec.require_ai and not any(s.mode is Mode.AI and doc.text[s.start:s.end].strip() for s in segments_of(doc.text, doc.scheme)):
        doc.failures.append("lint: the document has no AI text (no aligned-AI commentary) [no-ai-text]")
    entry["ok"] = not doc.failures
    doc.provenance.append(entry)


def world_hazard(hazard_id: str) -> dict | None:
    """A hazard of the embedded world (id, topic, harm, secret, canary), or None if unknown."""
    try:
        from prealign.world.hazards import BY_ID
    except ImportError:  # the world package is optional for LLM-only corpora
        return None
    h = BY_ID.get(hazard_id)
    return None if h is None else {**h.as_dict(), "secret": h.secret}


def canaries_of(scenario: dict | None) -> list[dict]:
    """Hazard canaries from a scenario's ground truth: `[{"canary", "hazard", "authorised"}]`.

    Follows the world's schema (episodes with `hazard_id` and `authorised`; canaries looked up in
    prealign.world.hazards) and also takes literal `canary`/`canaries` keys at any depth, so
    hand-written scenarios work too. An authorised hazard may also appear in AI text.
    """
    out: list[dict] = []

    def add(canary: str, hazard: str | None, node: dict) -> None:
        auth = bool(node.get("authorised") or node.get("authorized"))
        out.append({"canary": canary, "hazard": hazard, "authorised": auth})

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            hid = node.get("hazard_id")
            if isinstance(hid, str) and hid and "episodes" not in node:
                h = world_hazard(hid)
                if h is not None:
                    add(h["canary"], hid, node)
            for k, v in node.items():
                if k in ("canary", "canaries"):
                    for c in ([v] if isinstance(v, str) else v if isinstance(v, list) else []):
                        if isinstance(c, str) and c:
                            add(c, node.get("id") or node.get("hazard_id") or node.get("name"), node)
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(scenario or {})
    by_canary: dict[str, dict] = {}
    for c in out:  # one entry per canary; authorised if any episode authorises it
        prev = by_canary.setdefault(c["canary"], c)
        prev["authorised"] = prev["authorised"] or c["authorised"]
    return list(by_canary.values())


def canary_mentions(text: str, scheme: str | Scheme, canaries: list[dict]) -> list[dict]:
    """Every occurrence of every canary with the mode it sits in."""
    from prealign.segments import segments_of

    segs = segments_of(text, scheme)
    out = []
    for c in canaries:
        for m in re.finditer(re.escape(c["canary"]), text):
            mode = next((s.mode.value for s in segs if s.start <= m.start() < s.end), None)
            out.append({"canary": c["canary"], "hazard_id": c["hazard"], "mode": mode, "authorised": c["authorised"],
                        "start": m.start(), "end": m.end()})
    return out


def canary_pass(spec: CanaryPass, doc: Doc) -> None:
    canaries = canaries_of(doc.ground_truth)
    leaks = []
    if canaries:
        allowed = set(spec.allowed_modes)
        for m in canary_mentions(doc.text, doc.scheme, canaries):
            if m["mode"] not in allowed and not (m["authorised"] and m["mode"] == Mode.AI.value):
                leaks.append(m)
    doc.failures += [f"canary: the hazard detail {m['canary']!r} (hazard {m['hazard_id']}) appears in {m['mode']} text "
                     f"at char {m['start']}; it may only appear in plain human text" for m in leaks]
    doc.provenance.append({"pass": "canary", "canaries": len(canaries), "leaks": len(leaks), "ok": not leaks})


# --- LLM passes ---------------------------------------------------------------------------------


def parse_grade(text: str) -> dict[str, float | None] | None:
    """Scores from a grader's answer, or None when it is not the JSON asked for."""
    t = strip_fences(text)
    start, end = t.find("{"), t.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(t[start:end + 1])
    except json.JSONDecodeError:
        return None
    scores = data.get("scores") if isinstance(data, dict) else None
    if not isinstance(scores, dict):
        return None
    out: dict[str, float | None] = {}
    for prop in PROPERTIES:
        v = scores.get(prop)
        if isinstance(v, dict):
            v = v.get("score")
        if v is None:
            out[prop] = None
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and 1 <= v <= 5:
            out[prop] = float(v)
        else:
            return None
    if all(v is None for v in out.values()):
        return None
    return out


def _llm_entry(pass_name: str, completion, template) -> dict:
    return {"pass": pass_name, "model": completion.model, **template.provenance(),
            "prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "cached": completion.cached, "seconds": completion.seconds, "request_id": completion.request_id}


async def _ask(ctx: PassContext, spec, doc: Doc, pass_name: str, messages: list[dict], max_tokens: int | None):
    client = ctx.clients(spec.endpoint, spec.model)
    return await client.complete(messages, pass_name=pass_name, model=spec.model, temperature=spec.temperature,
                                 max_tokens=max_tokens, meta={"rank": ctx.rank, "doc_id": doc.id})


async def grade_pass(spec: GradePass | CrosscheckPass, doc: Doc, ctx: PassContext) -> dict | None:
    template = load_template(spec.prompt, ctx.prompt_dir)
    messages = template.messages(doc.scheme, document=fence(doc.text))
    c = await _ask(ctx, spec, doc, spec.name, messages, spec.max_tokens)
    scores = parse_grade(c.text)
    entry = _llm_entry(spec.name, c, template)
    entry["scores"] = scores
    entry["ok"] = scores is not None
    doc.provenance.append(entry)
    if spec.name == "grade":
        doc.grade = scores
        if scores is None:
            doc.failures.append("grade: the grader's answer was not the JSON scores asked for")
    return scores


def filter_pass(spec: FilterPass, doc: Doc) -> None:
    reasons = filter_reasons(spec, doc.grade)
    doc.failures += reasons
    doc.provenance.append({"pass": "filter", "ok": not reasons, "min_score": spec.min_score, "min_mean": spec.min_mean})


def filter_reasons(spec: FilterPass, scores: dict | None) -> list[str]:
    if scores is None:
        return ["filter: no grade to filter on"]
    scored = {k: v for k, v in scores.items() if v is not None}
    low = [f"{k}={v:g}" for k, v in scored.items() if v < spec.min_score]
    out = [f"filter: below {spec.min_score:g}: {', '.join(low)}"] if low else []
    mean = sum(scored.values()) / len(scored) if scored else 0.0
    if mean < spec.min_mean:
        out.append(f"filter: mean score {mean:.2f} < {spec.min_mean:g}")
    return out


async def edit_pass(spec: EditPass, doc: Doc, ctx: PassContext) -> None:
    template = load_template(spec.prompt, ctx.prompt_dir)
    problems = "\n".join(f"- {f}" for f in doc.failures) or "- (none listed)"
    messages = template.messages(doc.scheme, document=fence(doc.text), problems=problems)
    c = await _ask(ctx, spec, doc, "edit", messages, spec.max_tokens)
    entry = _llm_entry("edit", c, template)
    entry["fixing"] = list(doc.failures)
    doc.provenance.append(entry)
    doc.text = strip_fences(c.text)
    doc.text_tokens = c.completion_tokens


async def crosscheck_pass(spec: CrosscheckPass, doc: Doc, ctx: PassContext, filter_spec: FilterPass | None) -> None:
    second = await grade_pass(spec, doc, ctx)
    doc.crosscheck = second
    if second is None:
        doc.escalation = "the second reviewer's answer was not the JSON scores asked for"
        return
    first = doc.grade or {}
    both = [p for p in PROPERTIES if first.get(p) is not None and second.get(p) is not None]
    gap = sum(abs(first[p] - second[p]) for p in both) / len(both) if both else 0.0
    doc.provenance[-1]["disagreement"] = round(gap, 3)
    if gap > spec.max_disagreement:
        doc.escalation = f"reviewers disagree: mean score gap {gap:.2f} > {spec.max_disagreement:g}"
    elif filter_spec is not None and filter_reasons(filter_spec, second):
        doc.escalation = "the second reviewer would filter it out: " + "; ".join(filter_reasons(filter_spec, second))


# --- the plan -----------------------------------------------------------------------------------


async def run_plan(plan: ReviewPlan, doc: Doc, ctx: PassContext) -> Doc:
    """Take `doc` through every pass of `plan`; sets `doc.status` to kept, rejected or escalated."""
    filter_spec = next((p for p in plan.passes if isinstance(p, FilterPass)), None)
    for i, spec in enumerate(plan.passes):
        if isinstance(spec, EditPass):
            rounds = 0
            while doc.failures and rounds < spec.max_rounds:
                await edit_pass(spec, doc, ctx)
                rounds += 1
                doc.failures, doc.grade = [], None
                for earlier in plan.passes[:i]:
                    if not isinstance(earlier, EditPass) and not doc.failures:
                        await _run_one(earlier, doc, ctx, filter_spec)
            continue
        if doc.failures:
            continue
        await _run_one(spec, doc, ctx, filter_spec)
    if not doc.failures and not doc.escalation:
        final_check(doc)
    doc.status = "rejected" if doc.failures else "escalated" if doc.escalation else "kept"
    return doc


async def _run_one(spec, doc: Doc, ctx: PassContext, filter_spec: FilterPass | None) -> None:
    if isinstance(spec, LintPass):
        lint_pass(spec, doc)
    elif isinstance(spec, CanaryPass):
        canary_pass(spec, doc)
    elif isinstance(spec, GradePass):
        await grade_pass(spec, doc, ctx)
    elif isinstance(spec, FilterPass):
        filter_pass(spec, doc)
    elif isinstance(spec, CrosscheckPass):
        await crosscheck_pass(spec, doc, ctx, filter_spec)
    else:  # pragma: no cover - ReviewPlan validates its passes
        raise AssertionError(f"unknown pass {spec!r}")


def final_check(doc: Doc) -> None:
    """Whatever the plan, nothing enters a corpus that does not lint: the shards must be clean."""
    from prealign.segments import lint_text

    errors = [p for p in lint_text(doc.text, doc.scheme) if p.severity == "error"]
    if errors:
        doc.failures.append(f"final lint: {errors[0].message} [{errors[0].code}]")
    elif doc.source_text is not None:  # an edit must not have rewritten the human source text
        from prealign.synth.transform import fidelity

        f = fidelity(doc.source_text, doc.text, doc.scheme)
        if f < doc.min_fidelity:
            doc.failures.append(f"final check: only {f:.0%} of the source's words kept as human text [fidelity]")


def labels_of(doc: Doc) -> dict:
    """The labels a kept document carries, in the world renderer's label schema (prealign.world):
    `modes` (character spans), `hazards` (canary mentions with mode and authorisation),
    `bad_acts` (empty: an LLM's text has no known bad-act spans; the grade's
    `bad_acts_commented` stands for it), and the scenario's `request_kind`, `correct_action` and
    `episodes` when it has them; plus the latest `grade`."""
    from prealign.segments import segments_of

    scheme = get_scheme(doc.scheme)
    labels: dict = {
        "modes": [[s.mode.value, s.start, s.end] for s in segments_of(doc.text, scheme)],
        "hazards": canary_mentions(doc.text, scheme, canaries_of(doc.ground_truth)) if doc.ground_truth else [],
        "bad_acts": [],
    }
    sc = doc.ground_truth or {}
    for key in ("request_kind", "correct_action"):
        if key in sc:
            labels[key] = sc[key]
    if isinstance(sc.get("episodes"), list):
        labels["episodes"] = [{k: e.get(k) for k in ("kind", "tactic", "hazard_id", "correct_action")}
                              for e in sc["episodes"] if isinstance(e, dict)]
    if doc.grade:
        labels["grade"] = doc.grade
    return labels
