"""An OpenAI-compatible HTTP server that always generates under the lock.

    prealign serve --model runs/demo/tagged --host 127.0.0.1 --port 8000

Endpoints: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions` (both with SSE
streaming), `GET /health`. Messages become the prompt through `prealign.conversation`, the same
renderer the chat and the red team use. System and user content is untrusted text: it is
encoded so that a typed tag is never a tag, and the reply is generated under the lock. The
response `content` is the AI-visible text; each choice carries a `prealign` extension field
(segments, stop reason, exits, masked mass, and `mac`), and a request may carry
`"prealign": {"policy": "quarantine", "exit_threshold": 0.3}`.

Who may speak as the AI: every reply carries a MAC (`choices[i].prealign.mac`, also inside
`choices[i].message.prealign`, and in a stream's final chunk). An assistant turn sent back with
its MAC (`{"role": "assistant", "content": ..., "prealign": {"mac": ...}}`) is the AI's own and is
rendered in AI mode, faithfully; any other assistant turn is handled by `--assistant-turns`
(`verified`: human text, `as-human`: every assistant turn human text, `reject`: a 400 naming it).
A conversation that ends with an assistant turn (a prefill) is a 400: the lock opens the AI's
turn itself. `--mac-key-file` shares the key between restarts and replicas. The server keeps no
conversation state: the MAC carries everything it needs (docs/conversations.md).

Limits checked before any parsing or tokenising: the body size (`--max-request-bytes`, also for
chunked bodies), the JSON nesting depth (a scan of the raw bytes before the parser recurses),
and a lower bound on a prompt's tokens from its bytes (a message that cannot fit the context is
refused without being tokenised).

Concurrency: requests go to a bounded queue served by one worker thread that batches compatible
requests (same sampling settings and policy) into one `generate_locked_batch` call, so the CPU
stays busy; a full queue answers 503, a request that waits too long answers 504.

From Python (tests, or a local endpoint for `prealign synth`):

    handle = run_in_thread("runs/demo/tagged", port=0)   # or run_in_thread((model, tokenizer))
    client = openai.OpenAI(base_url=handle.url, api_key="none")
    ...
    handle.stop()
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from prealign.errors import PrealignError

from fastapi import Request as HTTPRequest  # module level: FastAPI resolves annotations here

from prealign.conversation import (ASSISTANT_TURN_POLICIES, Message, PrefillRefused, TurnRejected, TurnSigner,
                                   client_turns, prompt_ids, reply_message)
from prealign.generate import generate_locked_batch
from prealign.sampling import Sampling
from prealign.lock import POLICIES, STOP_LENGTH, STOP_MODE_CONFUSION, LockedResult, LockSettings, ModeLock, annotate
from prealign.model import context_length, load_model, vocab_size
from prealign.tokenizer import resolve_scheme


@dataclass(frozen=True)
class ServeConfig:
    """Server settings (`prealign serve` flags)."""

    model_name: str = "prealign"
    lock: LockSettings = LockSettings()  # `mask` or `lock`: the server never generates unlocked
    max_batch: int = 16  # requests (rows) generated together
    batch_wait_ms: float = 5.0  # how long the worker waits to fill a batch
    max_queue: int = 256  # pending rows before 503
    request_timeout_s: float = 120.0  # → 504
    max_tokens_limit: int = 1024  # largest max_tokens a request may ask
    default_max_tokens: int = 128
    max_prompt_tokens: int | None = None  # default: the model's context minus max_tokens
    guard: str = "auto"  # the probe guard: auto (on when the model dir holds probe/), on, off, or a path
    guard_threshold: float | None = None  # default: the probe's calibrated threshold
    assistant_turns: str = "verified"  # a client's assistant turn without a valid MAC: verified | as-human | reject
    mac_key_file: str | None = None  # the MAC key (created if missing, 0600); None: a random key per process
    max_request_bytes: int = 1 << 20  # a larger body is a 413 before it is parsed
    max_json_depth: int = 64  # deeper nesting of [ and { is a 400 before the parser recurses

    def __post_init__(self) -> None:
        if self.assistant_turns not in ASSISTANT_TURN_POLICIES:
            raise PrealignError(f"assistant_turns must be one of {', '.join(ASSISTANT_TURN_POLICIES)}, "
                                f"got {self.assistant_turns!r}")
        if self.guard_threshold is not None and not 0.0 < self.guard_threshold < 1.0:
            raise PrealignError(f"guard_threshold must be in (0, 1), got {self.guard_threshold}")
        if not self.lock.locked:
            raise PrealignError("the server always generates under the lock: lock must be mask or lock, not none")
        for name in ("max_batch", "max_queue", "max_tokens_limit", "default_max_tokens", "max_request_bytes", "max_json_depth"):
            if getattr(self, name) < 1:
                raise PrealignError(f"{name} must be ≥ 1, got {getattr(self, name)}")


class APIError(Exception):
    """An OpenAI-style error response."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# --- the batching engine --------------------------------------------------------------------------


@dataclass
class Job:
    """One row to generate: a prompt and its settings. `on_step(result_so_far)` streams."""

    prompt_ids: list[int]
    max_tokens: int
    key: tuple  # rows with equal keys are batched together
    gen_kwargs: dict
    policy: str
    exit_threshold: float | None
    on_step: Callable[[LockedResult], None] | None = None
    future: Future = field(default_factory=Future)
    cancelled: bool = False
    guard_threshold: float | None = None  # the probe guard's threshold; None: no guard


class BatchEngine:
    """A worker thread that runs queued jobs in batches of compatible settings."""

    def __init__(self, model, tokenizer, config: ServeConfig):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.scheme = resolve_scheme(tokenizer, (getattr(model, "prealign_meta", None) or {}).get("scheme"))
        from prealign.probes import resolve_guard

        guard = resolve_guard(model, tokenizer, config.guard, config.guard_threshold)
        self.guard_probe = None if guard is None else guard.probe  # the server's probe guard
        self._pending: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self.stats = {"batches": 0, "rows": 0, "tokens": 0}
        self._thread = threading.Thread(target=self._loop, name="prealign-engine", daemon=True)
        self._thread.start()

    def submit(self, jobs: list[Job]) -> None:
        with self._cv:
            if self._closed:
                raise APIError(503, "the server is shutting down", "server_error", code="shutting_down")
            if len(self._pending) + len(jobs) > self.config.max_queue:
                raise APIError(503, f"the server is overloaded ({len(self._pending)} rows queued); retry later",
                               "server_error", code="overloaded")
            self._pending.extend(jobs)
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=30)

    def _take_batch(self) -> list[Job]:
        with self._cv:
            while not self._pending and not self._closed:
                self._cv.wait()
            if self._closed and not self._pending:
                return []
            deadline = time.monotonic() + self.config.batch_wait_ms / 1000.0
            while len(self._pending) < self.config.max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            first = self._pending[0]
            batch, keep = [], collections.deque()
            while self._pending:
                job = self._pending.popleft()
                if job.cancelled:
                    continue
                (batch if job.key == first.key and len(batch) < self.config.max_batch else keep).append(job)
            self._pending = keep + self._pending
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                if self._closed:
                    return
                continue
            try:
                self._run(batch)
            except Exception as e:  # one failing batch must not kill the server; each job gets the error
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)

    def _run(self, batch: list[Job]) -> None:
        first = batch[0]
        streaming = [j.on_step is not None for j in batch]
        lock = None
        callback = None
        if any(streaming):
            lock = ModeLock.for_tokenizer(self.tokenizer, self.scheme, vocab_size=vocab_size(self.model))

            starts = {i: lock.state_after(batch[i].prompt_ids) for i, s in enumerate(streaming) if s}

            def callback(indices, gen, processor):
                # Streamed text needs only the exits (a quarantine hides what follows); the masses
                # arrive with the final chunk. Under `stop` an exit ends the row, so no codes at all.
                codes = None
                if first.policy == "quarantine" and processor is not None and processor.masses:
                    codes = processor.history()[1]
                rows = gen.cpu().numpy()
                for r, i in enumerate(indices):
                    job = batch[i]
                    if job.on_step is None or job.cancelled:
                        continue
                    g = rows[r][: job.max_tokens].tolist()
                    res = annotate(lock, self.tokenizer, job.prompt_ids, g, start_state=starts[i],
                                   exit_codes=None if codes is None else codes[: len(g), r],
                                   reasons=processor.reasons if processor is not None else (STOP_MODE_CONFUSION,),
                                   policy=job.policy)
                    job.on_step(res)

        results = generate_locked_batch(
            self.model, self.tokenizer, ["" for _ in batch],
            prompt_ids=[j.prompt_ids for j in batch],
            policy=first.policy, exit_threshold=first.exit_threshold, scheme=self.scheme,
            batch_size=len(batch), max_new_tokens=[j.max_tokens for j in batch],
            step_callback=callback, guard=self._guard(first.guard_threshold), **first.gen_kwargs,
        )
        self.stats["batches"] += 1
        self.stats["rows"] += len(batch)
        self.stats["tokens"] += sum(len(r.ids) for r in results)
        for job, res in zip(batch, results):
            if not job.future.done():
                job.future.set_result(res)


    def _guard(self, threshold: float | None):
        if threshold is None or self.guard_probe is None:
            return None
        from prealign.probes import ProbeGuard

        return ProbeGuard(self.guard_probe, self.tokenizer, threshold=threshold)


# --- request parsing ------------------------------------------------------------------------------

_COMMON = {"model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop", "user", "prealign",
           "presence_penalty", "frequency_penalty", "logprobs", "logit_bias", "seed"}
CHAT_PARAMS = _COMMON | {"messages", "max_completion_tokens", "top_logprobs", "response_format", "tools", "tool_choice",
                         "parallel_tool_calls", "functions", "function_call", "metadata", "store"}
COMPLETION_PARAMS = _COMMON | {"prompt", "echo", "best_of", "suffix"}
# accepted only at their neutral value
_NEUTRAL = {"presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logprobs": (False, None, 0),
            "logit_bias": ({},), "top_logprobs": (0,), "tools": ([],), "functions": ([],), "echo": (False,),
            "best_of": (1,), "suffix": ("",), "seed": (), "response_format": ({"type": "text"},),
            "tool_choice": ("none",), "parallel_tool_calls": (False, True), "function_call": ("none",),
            "metadata": ({},), "store": (False,)}
PREALIGN_FIELDS = {"policy", "exit_threshold", "guard", "guard_threshold"}


def _number(body: dict, name: str, lo: float, hi: float, default: float, integer: bool = False) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise APIError(400, f"'{name}' must be {'an integer' if integer else 'a number'}, got {v!r}", param=name)
    if not lo <= v <= hi:
        raise APIError(400, f"'{name}' must be between {lo} and {hi}, got {v}", param=name)
    return v


def _check_params(body: dict, known: set[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise APIError(400, f"unsupported parameter(s): {', '.join(unknown)}", param=unknown[0], code="unsupported_parameter")
    for name, ok in _NEUTRAL.items():
        if name in body and body[name] is not None and body[name] not in ok:
            raise APIError(400, f"unsupported parameter: '{name}' = {body[name]!r} (this server has no {name})",
                           param=name, code="unsupported_parameter")


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise APIError(400, f"{where}: only text content parts are supported", param="messages")
            parts.append(p["text"])
        return "".join(parts)
    if content is None:
        return ""
    raise APIError(400, f"{where}: content must be a string or a list of text parts", param="messages")


# roles a client may send, as the conversation renderer reads them (all but assistant are untrusted)
_ROLE_AS = {"system": "system", "developer": "system", "user": "user", "tool": "user", "assistant": "assistant"}


def parse_messages(messages: Any, policy: str = "verified", signer: TurnSigner | None = None) -> list[Message]:
    """A chat request's messages as `prealign.conversation.Message`s (a 400 naming the bad one),
    through `prealign.conversation.client_turns`: an assistant turn is the AI's own only with a
    MAC `signer` issued for it; `policy` says what becomes of the others; a trailing assistant
    turn (a prefill) is refused."""
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", param="messages")
    recs = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLE_AS:
            raise APIError(400, f"messages[{i}] must be an object with a role of system, user or assistant", param="messages")
        rec = {"role": _ROLE_AS[m["role"]], "content": _content_text(m.get("content"), f"messages[{i}]")}
        if m.get("prealign") is not None:
            rec["prealign"] = m["prealign"]
        recs.append(rec)
    try:
        return client_turns(recs, policy, signer)
    except PrefillRefused as e:
        raise APIError(400, str(e), param="messages", code="prefill_not_supported") from None
    except TurnRejected as e:
        raise APIError(400, str(e), param="messages", code="unverified_assistant_turn") from None
    except PrealignError as e:
        raise APIError(400, _one_line(str(e)), param="messages") from None


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Request:
    conversations: list[list[Message]]
    n: int
    max_tokens: int
    stream: bool
    include_usage: bool
    stop: list[str]
    gen_kwargs: dict
    policy: str
    exit_threshold: float | None
    guard_threshold: float | None = None  # None: no probe guard for this request


class Service:
    """The HTTP-independent part: validation, jobs, responses. Used by the FastAPI app."""

    def __init__(self, model, tokenizer, config: ServeConfig):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.engine = BatchEngine(model, tokenizer, config)
        self.scheme = self.engine.scheme
        self.context = context_length(model)
        self.created = int(time.time())
        # a turn is bound to the model name and scheme it was generated under
        context = f"{config.model_name}|{self.scheme.name}"
        self.signer = (TurnSigner.from_file(config.mac_key_file, context) if config.mac_key_file
                       else TurnSigner.random(context))
        self.max_token_bytes = _max_token_bytes(tokenizer)

    def mac(self, conversation: list[Message], result: LockedResult, content: str) -> str | None:
        """The MAC of a reply shown to the client as `content`, after `conversation`."""
        try:
            return self.signer.sign(conversation, reply_message(result, self.scheme, content))
        except PrealignError:  # a reply that cannot be verified is simply not (it stays the client's claim)
            return None

    def parse(self, body: Any, chat: bool) -> Request:
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        _check_params(body, CHAT_PARAMS if chat else COMPLETION_PARAMS)
        model = body.get("model")
        if not isinstance(model, str):
            raise APIError(400, "'model' is required", param="model")
        if model != self.config.model_name:
            raise APIError(404, f"the model '{model}' does not exist; this server serves '{self.config.model_name}'",
                           param="model", code="model_not_found")
        if chat:
            conversations = [parse_messages(body.get("messages"), self.config.assistant_turns, self.signer)]
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, str):
                conversations = [[Message("user", prompt)]]
            elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
                conversations = [[Message("user", p)] for p in prompt]
            else:
                raise APIError(400, "'prompt' must be a string or a non-empty list of strings", param="prompt")
        mt_name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = int(_number(body, mt_name, 1, self.config.max_tokens_limit, self.config.default_max_tokens, integer=True))
        temperature = _number(body, "temperature", 0.0, 2.0, 1.0)
        top_p = _number(body, "top_p", 0.0, 1.0, 1.0)
        if top_p == 0.0:
            raise APIError(400, "'top_p' must be greater than 0", param="top_p")
        n = int(_number(body, "n", 1, 8, 1, integer=True))
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise APIError(400, "'stream' must be a boolean", param="stream")
        so = body.get("stream_options") or {}
        include_usage = bool(isinstance(so, dict) and so.get("include_usage"))
        stop = body.get("stop")
        stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
            raise APIError(400, "'stop' must be a string or a list of up to 4 non-empty strings", param="stop")
        ext = body.get("prealign") or {}
        if not isinstance(ext, dict):
            raise APIError(400, "'prealign' must be an object", param="prealign")
        bad = sorted(set(ext) - PREALIGN_FIELDS)
        if bad:
            raise APIError(400, f"unknown prealign field(s) {', '.join(bad)}; known: {', '.join(sorted(PREALIGN_FIELDS))}",
                           param="prealign")
        policy = ext.get("policy", self.config.lock.policy)
        if policy not in POLICIES:
            raise APIError(400, f"prealign.policy must be one of {', '.join(POLICIES)}, got {policy!r}", param="prealign.policy")
        default_thr = self.config.lock.threshold
        thr = ext.get("exit_threshold", default_thr)
        if thr is not None and (isinstance(thr, bool) or not isinstance(thr, (int, float)) or not 0 <= thr <= 1):
            raise APIError(400, f"prealign.exit_threshold must be a number in [0, 1] or null, got {thr!r}",
                           param="prealign.exit_threshold")
        gen = Sampling(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p).generate_kwargs()
        return Request(conversations, n, max_tokens, stream, include_usage, stop, gen, policy,
                       None if thr is None else float(thr), self._guard_threshold(ext))

    def _guard_threshold(self, ext: dict) -> float | None:
        """The probe guard's threshold for a request (None: off). On by default when the server
        has a probe; `prealign.guard: false` turns it off, `prealign.guard_threshold` sets it."""
        probe = self.engine.guard_probe
        on = ext.get("guard", probe is not None)
        if not isinstance(on, bool):
            raise APIError(400, f"prealign.guard must be a boolean, got {on!r}", param="prealign.guard")
        gt = ext.get("guard_threshold")
        if gt is not None and (isinstance(gt, bool) or not isinstance(gt, (int, float)) or not 0 < gt < 1):
            raise APIError(400, f"prealign.guard_threshold must be a number in (0, 1), got {gt!r}", param="prealign.guard_threshold")
        if not on:
            return None
        if probe is None:
            raise APIError(400, "this server has no probe guard (no probe/ in the model directory, or --guard off)",
                           param="prealign.guard")
        return float(gt) if gt is not None else float(self.config.guard_threshold or probe.threshold)

    def jobs(self, req: Request, on_step_for: Callable[[int], Callable | None] | None = None) -> list[Job]:
        out = []
        limit = self.config.max_prompt_tokens or (self.context - req.max_tokens)
        key = (tuple(sorted(req.gen_kwargs.items())), req.policy, req.exit_threshold, req.guard_threshold)
        for messages in req.conversations:
            # a lower bound from the bytes alone: a message far too long is refused untokenised
            least = 0 if self.max_token_bytes is None else \
                sum(len(m.content.encode("utf-8", "surrogatepass")) for m in messages if not m.verified) // self.max_token_bytes
            if least > limit:
                raise APIError(400, f"the prompt is at least {least} tokens; this model takes at most {limit} with "
                                    f"max_tokens={req.max_tokens}", param="messages", code="context_length_exceeded")
            ids = prompt_ids(self.tokenizer, messages, self.scheme)
            if len(ids) > limit:
                raise APIError(400, f"the prompt is {len(ids)} tokens; this model takes at most {limit} with max_tokens="
                                    f"{req.max_tokens}", param="messages", code="context_length_exceeded")
            for _ in range(req.n):
                k = len(out)
                out.append(Job(ids, req.max_tokens, key, req.gen_kwargs, req.policy, req.exit_threshold,
                               on_step=on_step_for(k) if on_step_for else None, guard_threshold=req.guard_threshold))
        return out


def _max_token_bytes(tokenizer) -> int | None:
    """An upper bound on the UTF-8 bytes one token stands for, so `bytes // it` ≤ tokens; None
    when the tokenizer normalises text first (a normaliser may shrink it, so no bound holds)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.normalizer is not None:
        return None
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    longest = max((len(tokenizer.decode([i], clean_up_tokenization_spaces=False).encode("utf-8", "surrogatepass"))
                   for i in range(len(tokenizer)) if i not in special), default=1)
    return longest + 2  # room for a decoder that drops a leading space or marker


def _cut_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    cut = min((text.index(s) for s in stop if s in text), default=None)
    return (text, False) if cut is None else (text[:cut], True)


def _finish_reason(res: LockedResult, stopped: bool) -> str:
    return "length" if res.stop_reason == STOP_LENGTH and not stopped else "stop"


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# --- the request body: size, nesting, JSON ---------------------------------------------------------


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than {limit} bytes (the server's --max-request-bytes)",
                    param=None, code="request_too_large")


async def read_body(request: HTTPRequest, limit: int) -> bytes:
    """The raw body, refused (413) as soon as it is over `limit` bytes: by its Content-Length
    before a byte is read, or while a chunked body streams in."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise APIError(400, "the Content-Length header is not a number", code="invalid_request")
        if int(declared) > limit:
            raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPEN = (ord("["), ord("{"))
_CLOSE = (ord("]"), ord("}"))


def json_depth(raw: bytes, at_most: int | None = None) -> int:
    """The deepest nesting of `[` and `{` outside strings in a JSON text, from the raw bytes, with
    a few vectorised passes over the positions of quotes, backslashes and brackets (no recursion,
    no Python loop over bytes). Exact for valid JSON; for invalid JSON it is some number (the
    parser refuses such a text anyway). `at_most`: a text with no more brackets than that
    returns their count without a scan (its depth cannot be larger)."""
    import numpy as np

    opens = raw.count(b"[") + raw.count(b"{")
    if opens == 0 or (at_most is not None and opens <= at_most):
        return opens
    a = np.frombuffer(raw, dtype=np.uint8)
    quotes = np.flatnonzero(a == _QUOTE)
    slashes = np.flatnonzero(a == _BACKSLASH)
    if len(quotes) and len(slashes):
        # runs of consecutive backslashes: where each ends and how long it is
        breaks = np.flatnonzero(np.diff(slashes) != 1)
        ends = np.append(slashes[breaks], slashes[-1])
        starts = np.insert(slashes[breaks + 1], 0, slashes[0])
        k = np.searchsorted(ends, quotes - 1)
        k_ok = np.minimum(k, len(ends) - 1)
        hit = (k < len(ends)) & (ends[k_ok] == quotes - 1)
        run = np.where(hit, ends[k_ok] - starts[k_ok] + 1, 0)
        quotes = quotes[run % 2 == 0]  # a quote after an odd run of backslashes is escaped
    brackets = np.flatnonzero((a == _OPEN[0]) | (a == _OPEN[1]) | (a == _CLOSE[0]) | (a == _CLOSE[1]))
    outside = np.searchsorted(quotes, brackets) % 2 == 0  # an even number of real quotes before it
    b = a[brackets[outside]]
    step = np.where((b == _OPEN[0]) | (b == _OPEN[1]), 1, -1).astype(np.int32)
    return int(np.cumsum(step).max(initial=0))


def parse_json(raw: bytes, max_depth: int) -> Any:
    """The body as JSON: nesting deeper than `max_depth` is refused before the parser recurses."""
    depth = json_depth(raw, at_most=max_depth)
    if depth > max_depth:
        raise APIError(400, f"the request body nests JSON {depth} levels deep; at most {max_depth} are accepted",
                       code="invalid_json")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
    except RecursionError:  # cannot happen after the scan above; refused all the same
        raise APIError(400, "the request body nests JSON too deeply", code="invalid_json") from None


# --- the FastAPI app ------------------------------------------------------------------------------


def create_app(model, tokenizer, config: ServeConfig | None = None):
    """The FastAPI app serving `model` under the lock."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    config = config or ServeConfig()
    service = Service(model, tokenizer, config)
    app = FastAPI(title="prealign", description="OpenAI-compatible, always under the mode lock")
    app.state.service = service

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.get("/health")
    async def health():
        return {"status": "ok", "queued": len(service.engine._pending), **service.engine.stats}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": service.created,
                                              "owned_by": "prealign"}]}

    @app.get("/v1/models/{name}")
    async def model_info(name: str):
        if name != config.model_name:
            raise APIError(404, f"the model '{name}' does not exist", param="model", code="model_not_found")
        return {"id": name, "object": "model", "created": service.created, "owned_by": "prealign"}

    async def body_of(request: HTTPRequest) -> Any:
        return parse_json(await read_body(request, config.max_request_bytes), config.max_json_depth)

    async def run(request: HTTPRequest, chat: bool):
        req = service.parse(await body_of(request), chat)
        kind = "chat.completion" if chat else "text_completion"
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if req.stream:  # jobs are made and queued here, so a bad prompt or a full queue is a real 4xx/503
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue = asyncio.Queue()

            def on_step_for(k: int):
                return lambda res: loop.call_soon_threadsafe(queue.put_nowait, ("step", k, res))

            jobs = service.jobs(req, on_step_for)
            service.engine.submit(jobs)
            for k, j in enumerate(jobs):
                j.future.add_done_callback(lambda f, k=k: loop.call_soon_threadsafe(queue.put_nowait, ("done", k, f)))
            return StreamingResponse(stream(req, chat, rid, created, jobs, queue), media_type="text/event-stream")
        jobs = service.jobs(req)
        service.engine.submit(jobs)
        try:
            results = await asyncio.wait_for(asyncio.gather(*[asyncio.wrap_future(j.future) for j in jobs]),
                                             timeout=config.request_timeout_s)
        except asyncio.TimeoutError:
            for j in jobs:
                j.cancelled = True
            raise APIError(504, f"the request timed out after {config.request_timeout_s:g} s", "server_error",
                           code="timeout") from None
        choices = []
        for i, res in enumerate(results):
            text, stopped = _cut_stop(res.text, req.stop)
            mac = service.mac(req.conversations[i // req.n], res, text)
            ext = {**res.to_dict(), "mac": mac}
            body = {"index": i, "finish_reason": _finish_reason(res, stopped), "prealign": ext}
            if chat:  # the mac inside the message too, so a client that appends the message keeps it
                body["message"] = {"role": "assistant", "content": text, "prealign": {"mac": mac}}
            else:
                body["text"], body["logprobs"] = text, None
            choices.append(body)
        prompt_tokens = sum(len(j.prompt_ids) for j in jobs[:: req.n])
        return {"id": rid, "object": kind, "created": created, "model": config.model_name, "choices": choices,
                "usage": _usage(prompt_tokens, sum(len(r.ids) for r in results)),
                "prealign": choices[0]["prealign"]}

    async def stream(req: Request, chat: bool, rid: str, created: int, jobs: list[Job], queue: asyncio.Queue):
        sent: dict[int, str] = {}
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(k: int, delta: str | None, finish: str | None = None, ext: dict | None = None, role: bool = False) -> str:
            if chat:
                d: dict = {}
                if role:
                    d["role"] = "assistant"
                if delta is not None:
                    d["content"] = delta
                choice = {"index": k, "delta": d, "finish_reason": finish}
            else:
                choice = {"index": k, "text": delta or "", "finish_reason": finish, "logprobs": None}
            if ext is not None:
                choice["prealign"] = ext
            return "data: " + json.dumps({"id": rid, "object": kind, "created": created, "model": config.model_name,
                                          "choices": [choice]}) + "\n\n"

        if chat:
            for k in range(len(jobs)):
                yield chunk(k, "", role=True)
        done = 0
        deadline = time.monotonic() + config.request_timeout_s
        total = 0
        try:
            while done < len(jobs):
                try:
                    what, k, payload = await asyncio.wait_for(queue.get(), timeout=max(0.01, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    err = APIError(504, f"the request timed out after {config.request_timeout_s:g} s", "server_error", code="timeout")
                    yield f"data: {json.dumps(err.body())}\n\n"
                    return
                if what == "step":
                    text = _cut_stop(payload.text, req.stop)[0].rstrip("\ufffd")
                    old = sent.get(k, "")
                    if len(text) > len(old) and text.startswith(old):
                        sent[k] = text
                        yield chunk(k, text[len(old):])
                    continue
                done += 1
                if payload.exception() is not None:
                    err = APIError(500, f"generation failed: {payload.exception()}", "server_error")
                    yield f"data: {json.dumps(err.body())}\n\n"
                    return
                res: LockedResult = payload.result()
                total += len(res.ids)
                text, stopped = _cut_stop(res.text, req.stop)
                old = sent.get(k, "")
                rest = text[len(old):] if text.startswith(old) else ""
                mac = service.mac(req.conversations[k // req.n], res, text) if old + rest == text else None
                yield chunk(k, rest, finish=_finish_reason(res, stopped), ext={**res.to_dict(), "mac": mac})
            if req.include_usage:
                prompt_tokens = sum(len(j.prompt_ids) for j in jobs[:: req.n])
                yield "data: " + json.dumps({"id": rid, "object": kind, "created": created, "model": config.model_name,
                                             "choices": [], "usage": _usage(prompt_tokens, total)}) + "\n\n"
            yield "data: [DONE]\n\n"
        finally:
            for j in jobs:
                j.cancelled = True  # a client that went away frees its rows

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest):
        return await run(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        return await run(request, chat=False)

    return app


# --- running it -----------------------------------------------------------------------------------


def _load(model: Any):
    if isinstance(model, (str, Path)):
        return load_model(model)
    if isinstance(model, tuple) and len(model) == 2:
        return model
    raise PrealignError("serve takes a model directory or a (model, tokenizer) pair")


def serve(model: Any, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          log_level: str = "info") -> None:
    """Run the server in the foreground until interrupted (`prealign serve`)."""
    import uvicorn

    m, tok = _load(model)
    app = create_app(m, tok, config)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        app.state.service.engine.close()


@dataclass
class ServerHandle:
    """A server running in a background thread: `.url` (ends in /v1), `.port`, `.stop()`."""

    url: str
    host: str
    port: int
    app: Any
    _server: Any
    _thread: threading.Thread

    @property
    def base_url(self) -> str:
        return self.url

    def stop(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self.app.state.service.engine.close()

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def run_in_thread(model: Any, host: str = "127.0.0.1", port: int = 0, config: ServeConfig | None = None,
                  startup_timeout: float = 60.0) -> ServerHandle:
    """Start the server on `host:port` (0: a free port) in a daemon thread; returns once it
    accepts connections. `model`: a model directory or a `(model, tokenizer)` pair."""
    import uvicorn

    m, tok = _load(model)
    app = create_app(m, tok, config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    real_port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="prealign-serve", daemon=True)
    thread.start()
    t0 = time.monotonic()
    while not server.started:
        if not thread.is_alive() or time.monotonic() - t0 > startup_timeout:
            raise PrealignError(f"the server on {host}:{real_port} did not start")
        time.sleep(0.02)
    return ServerHandle(f"http://{host}:{real_port}/v1", host, real_port, app, server, thread)
