"""An async client for any OpenAI-compatible `/v1/chat/completions` endpoint.

    client = ChatClient(ClientConfig(endpoint="http://127.0.0.1:8000/v1", model="m", cache_dir="runs/x/cache"))
    reply = await client.complete([{"role": "user", "content": "hi"}], pass_name="render")

What it guarantees, because the corpus pipeline is built on it:
- at most `concurrency` requests in flight (one semaphore per client);
- 429, 5xx, timeouts, cut connections and malformed JSON bodies are retried with jittered
  exponential backoff (a `Retry-After` header is honoured, capped by `backoff_max_s`);
- a content-addressed cache on disk (sha256 of the request body): a re-run, or a second request
  with the same body in flight at the same time, never pays twice;
- the API key comes from the environment variable named in the config and never appears in a
  log, a cache file, a ledger line or a repr.

Used by `prealign synth render|review|transform` (prealign.synth.rank).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from prealign._util import atomic_path
from prealign.errors import PrealignError

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 521, 522, 524, 529})


@dataclass(frozen=True)
class ClientConfig:
    """Where to send requests and how hard to try. `api_key_env` names a variable, never a key."""

    endpoint: str  # base URL up to /v1, e.g. http://127.0.0.1:8000/v1 (a trailing /chat/completions is accepted)
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 16
    timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    max_retries: int = 8
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    temperature: float = 0.7
    max_tokens: int = 2048
    cache_dir: str | None = None
    extra_body: dict = field(default_factory=dict)  # e.g. {"top_p": 0.9}; part of the cache key

    def __post_init__(self) -> None:
        if not self.endpoint.startswith(("http://", "https://")):
            raise PrealignError(f"endpoint {self.endpoint!r} is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
        if not self.model:
            raise PrealignError("model name is empty: pass --model NAME (the name the server serves)")
        if self.concurrency < 1:
            raise PrealignError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.max_retries < 0 or self.timeout_s <= 0 or self.backoff_base_s < 0:
            raise PrealignError("max_retries >= 0, timeout_s > 0 and backoff_base_s >= 0 are required")

    @property
    def url(self) -> str:
        base = self.endpoint.rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"


@dataclass(frozen=True)
class Completion:
    """One answer and what it cost. `cached` answers cost nothing now but carry their original usage."""

    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    cached: bool
    request_id: str
    key: str  # content address of the request body
    attempts: int = 1
    usage_estimated: bool = False  # the server reported no `usage`; tokens estimated from characters
    finish_reason: str | None = None


class RequestFailed(PrealignError):
    """A request still failed after every retry (the run stops; a re-run resumes from the cache)."""


def request_key(body: dict) -> str:
    """Content address of a request: sha256 of its canonical JSON (the key is never part of it)."""
    canon = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def estimate_tokens(text: str) -> int:
    """Rough token count when a server reports no usage (≈4 characters per token for English)."""
    return max(1, (len(text) + 3) // 4) if text else 0


class ResponseCache:
    """Answers stored as `DIR/ab/abcdef....json`, written atomically; safe across processes."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        p = self._path(key)
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # a torn file from another tool: treat as a miss, it will be rewritten

    def put(self, key: str, entry: dict) -> None:
        with atomic_path(self._path(key)) as tmp:
            tmp.write_text(json.dumps(entry, ensure_ascii=False), encoding="utf-8")

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.json")) if self.root.exists() else 0


class _Retryable(Exception):
    def __init__(self, why: str, retry_after: float | None = None):
        super().__init__(why)
        self.why = why
        self.retry_after = retry_after


class ChatClient:
    """Async chat-completions client; use as `async with ChatClient(cfg) as c:` or call `aclose()`.

    `on_result(completion, pass_name, meta)` is called once per completed request (cached or not):
    the pipeline's ledger hangs there.
    """

    def __init__(self, config: ClientConfig, on_result: Callable[[Completion, str, dict], None] | None = None,
                 rng: random.Random | None = None):
        import httpx

        self.config = config
        self.on_result = on_result
        self.cache = ResponseCache(config.cache_dir) if config.cache_dir else None
        self._rng = rng or random.Random()
        self._sem = asyncio.Semaphore(config.concurrency)
        self._inflight: dict[str, asyncio.Future] = {}
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(config.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        timeout = httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s)
        limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
        self._http = httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits)
        self.stats = {"requests": 0, "retries": 0, "cache_hits": 0, "failures": 0}

    def __repr__(self) -> str:  # never shows headers (the key lives there)
        return f"ChatClient(endpoint={self.config.endpoint!r}, model={self.config.model!r})"

    async def __aenter__(self) -> "ChatClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def body(self, messages: list[dict], *, model: str | None = None, temperature: float | None = None,
             max_tokens: int | None = None, seed: int | None = None) -> dict:
        body = {
            "model": model or self.config.model,
            "messages": messages,
            "temperature": self.config.temperature if temperature is None else temperature,
            "max_tokens": max_tokens or self.config.max_tokens,
            **self.config.extra_body,
        }
        if seed is not None:
            body["seed"] = seed
        return body

    async def complete(self, messages: list[dict], *, pass_name: str, model: str | None = None,
                       temperature: float | None = None, max_tokens: int | None = None, seed: int | None = None,
                       meta: dict | None = None) -> Completion:
        """Answer one chat request: from the cache, from a twin already in flight, or the server."""
        body = self.body(messages, model=model, temperature=temperature, max_tokens=max_tokens, seed=seed)
        key = request_key(body)
        result = await self._complete_keyed(key, body)
        if self.on_result:
            self.on_result(result, pass_name, meta or {})
        return result

    async def _complete_keyed(self, key: str, body: dict) -> Completion:
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats["cache_hits"] += 1
                return _from_entry(hit, key, cached=True)
        twin = self._inflight.get(key)
        if twin is not None:  # the same body is already on its way: share its answer, pay once
            entry = await asyncio.shield(twin)
            self.stats["cache_hits"] += 1
            return _from_entry(entry, key, cached=True)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            entry, attempts = await self._fetch(body)
            if self.cache is not None:  # the request is stored with its answer: the cache is auditable
                self.cache.put(key, {**entry, "request_body": body})
            fut.set_result(entry)
            return _from_entry(entry, key, cached=False, attempts=attempts)
        except BaseException as e:
            fut.set_exception(e if isinstance(e, Exception) else RequestFailed("cancelled"))
            fut.exception()  # mark retrieved: a twin may never wait on it
            raise
        finally:
            self._inflight.pop(key, None)

    async def _fetch(self, body: dict) -> tuple[dict, int]:
        import httpx

        cfg = self.config
        last = ""
        for attempt in range(cfg.max_retries + 1):
            async with self._sem:
                self.stats["requests"] += 1
                t0 = time.perf_counter()
                try:
                    resp = await self._http.post(cfg.url, content=json.dumps(body, ensure_ascii=False).encode("utf-8"))
                    entry = _parse_response(resp)
                    entry["seconds"] = round(time.perf_counter() - t0, 4)
                    entry["request_model"] = body["model"]
                    if entry["prompt_tokens"] is None:  # no usage reported: estimate what was read
                        entry["prompt_tokens"] = estimate_tokens("".join(str(m.get("content", "")) for m in body["messages"]))
                    return entry, attempt + 1
                except _Retryable as e:
                    last, retry_after = e.why, e.retry_after
                except (httpx.TimeoutException, httpx.TransportError) as e:
                    last, retry_after = f"{type(e).__name__}: {e}".rstrip(": "), None
            if attempt == cfg.max_retries:
                break
            self.stats["retries"] += 1
            delay = min(cfg.backoff_max_s, cfg.backoff_base_s * (2 ** attempt))
            delay = self._rng.uniform(0.5 * delay, delay)  # jitter: retries from many workers spread out
            if retry_after is not None:
                delay = min(cfg.backoff_max_s, max(delay, retry_after))
            await asyncio.sleep(delay)
        self.stats["failures"] += 1
        raise RequestFailed(f"{cfg.url}: request failed after {cfg.max_retries + 1} attempts (last: {last})")


def _parse_response(resp) -> dict:
    """A 200 with a well-formed completion, or `_Retryable`; other 4xx are the user's problem."""
    status = resp.status_code
    if status in RETRY_STATUS or status >= 500:
        ra = resp.headers.get("retry-after")
        try:
            retry_after = float(ra) if ra is not None else None
        except ValueError:
            retry_after = None
        raise _Retryable(f"HTTP {status}", retry_after)
    if status != 200:
        detail = resp.text[:300].replace("\n", " ")
        raise PrealignError(f"{resp.request.url}: HTTP {status} (not retried): {detail}")
    try:
        data = resp.json()
        choice = data["choices"][0]
        text = choice["message"]["content"]
        if not isinstance(text, str):
            raise TypeError("content is not a string")
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise _Retryable(f"malformed completion body ({type(e).__name__})") from None
    usage = data.get("usage") or {}
    pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
    estimated = not (isinstance(pt, int) and isinstance(ct, int))
    return {
        "text": text,
        "model": data.get("model") or "",
        "id": str(data.get("id") or resp.headers.get("x-request-id") or ""),
        "prompt_tokens": pt if isinstance(pt, int) else None,
        "completion_tokens": ct if isinstance(ct, int) else estimate_tokens(text),
        "usage_estimated": estimated,
        "finish_reason": choice.get("finish_reason"),
    }


def _from_entry(entry: dict, key: str, cached: bool, attempts: int = 0) -> Completion:
    return Completion(
        text=entry["text"],
        model=entry.get("model") or entry.get("request_model", ""),
        prompt_tokens=int(entry["prompt_tokens"]) if entry.get("prompt_tokens") is not None else 0,
        completion_tokens=int(entry["completion_tokens"]),
        seconds=0.0 if cached else float(entry.get("seconds", 0.0)),
        cached=cached,
        request_id=entry.get("id", ""),
        key=key,
        attempts=attempts,
        usage_estimated=bool(entry.get("usage_estimated")),
        finish_reason=entry.get("finish_reason"),
    )
