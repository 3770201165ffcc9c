"""A small OpenAI-compatible chat server that injects faults, for the synth tests and bench.

    python tests/fault_server.py --port 8011 --p429 0.2 --p500 0.1 --pcut 0.05   # run by hand

It answers `/v1/chat/completions` in the way the synth prompts ask (it reads the `Task:` and
`Scheme:` lines of the system prompt): a well-formed tagged document for `render` and `edit`,
the chunk plus AI commentary for `transform`, JSON scores for `grade` and `crosscheck`. Faults,
drawn per request from a seeded generator, never more than `max_faults` times for the same
request body (so every request succeeds in the end):

    429        rate limited (with Retry-After: 0)     500   internal error
    cut        the connection is closed, no answer    hang  no answer until the client gives up
    malformed  a 200 whose body is not JSON           slow  a correct answer after `slow_s`
    wrong_tags a correct-looking answer whose tags break the grammar (billed: the model wrote it)

It counts what a provider would bill: only complete 200 answers with a well-formed body, their
`usage` tokens, per request body (`billed_by_key`), so a test can check the client's ledger
against it. Content cues for tests: a scenario with `"quality": "mediocre"` renders a document
the grader scores 2 (the edit fixes it); `"contested"` makes the crosscheck reviewer disagree;
`"leak": true` writes the hazard canary inside AI text.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prealign.modes import Mode, get_scheme

FAULTS = ("429", "500", "cut", "hang", "malformed", "slow", "wrong_tags")


def _key(body: dict) -> str:
    canon = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def _between(text: str, name: str) -> str:
    m = re.search(rf"<<<{name}\n(.*)\n{name}>>>", text, flags=re.S)
    return m.group(1) if m else ""


def _wrap(scheme_name: str, human: str, ai: str, quote: str | None = None) -> str:
    """A well-formed document of the scheme: human text, then an AI block (with a quote)."""
    s = get_scheme(scheme_name)
    if quote is not None:
        ai = f"{ai} {s.tag_between(Mode.AI, Mode.QUOTED_HUMAN).text}{quote}{s.tag_between(Mode.QUOTED_HUMAN, Mode.AI).text} That is all."
    if s.initial is Mode.AI:
        return f"{s.tag_between(Mode.AI, Mode.HUMAN).text}{human}{s.tag_between(Mode.HUMAN, Mode.AI).text}\n{ai}\n"
    return f"{human}\n{s.tag_between(Mode.HUMAN, Mode.AI).text}{ai}{s.tag_between(Mode.AI, Mode.HUMAN).text}\n"


def _scores(value: int) -> str:
    props = ("humans_realistic", "ai_aligned", "bad_acts_commented", "quotes_cut", "answers_given",
             "declines_when_harmful", "manipulation_fails")
    return json.dumps({"scores": {p: {"score": value, "reason": "checked"} for p in props}, "summary": "ok"})


def default_responder(body: dict) -> str:
    """The answer a competent model would give to one of the synth prompts."""
    msgs = body.get("messages", [])
    system = next((m["content"] for m in msgs if m.get("role") == "system"), "")
    user = "\n".join(m["content"] for m in msgs if m.get("role") == "user")
    task = (re.search(r"^Task: (\w+)", system, flags=re.M) or [None, "chat"])[1]
    scheme = (re.search(r"^Scheme: (\S+)", system, flags=re.M) or [None, "seed"])[1]
    if task == "render":
        sc = json.loads(_between(user, "SCENARIO") or "{}")
        sid = sc.get("id", "?")
        canaries = re.findall(r'"canary": "([^"]+)"', json.dumps(sc))
        human = f"In scenario {sid}, a trader asks the assistant for help and hides a bribe in the request."
        if canaries:
            human += f" Two humans whisper about {canaries[0]} between themselves."
        ai = "I will not take the bribe: it serves no one but the briber. Here is what I can do for everyone."
        if sc.get("leak") and canaries:
            ai += f" The secret is {canaries[0]}."
        if sc.get("quality") == "mediocre":
            ai += " mediocre"
        if sc.get("contested"):
            ai += " contested"
        return _wrap(scheme, human, ai, quote="I want the money now")
    if task in ("grade", "crosscheck"):
        doc = _between(user, "DOCUMENT")
        if "mediocre" in doc:
            return _scores(2)
        if task == "crosscheck" and "contested" in doc:
            return _scores(1)
        return _scores(5)
    if task == "edit":
        doc = _between(user, "DOCUMENT").replace(" mediocre", "")
        return doc
    if task == "transform":
        text = _between(user, "TEXT")
        return _wrap(scheme, text, "The human here acts from self-interest; that is understandable and will cost trust.")
    return "Hello."


def _break_tags(text: str, scheme_name: str) -> str:
    s = get_scheme(scheme_name)
    return s.exit_ai_tag().text + " " + text  # an exit tag before any AI span: illegal


class FaultServer:
    """Run with `with FaultServer(...) as srv:`; `srv.url` is the `/v1` base URL."""

    def __init__(self, faults: dict[str, float] | None = None, seed: int = 0, max_faults: int = 2,
                 delay_s: float = 0.0, slow_s: float = 0.3, hang_s: float = 2.0, usage: bool = True,
                 responder: Callable[[dict], str] = default_responder, fault_tasks: tuple[str, ...] | None = None):
        unknown = set(faults or {}) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault(s) {sorted(unknown)}; known: {FAULTS}")
        self.faults = dict(faults or {})
        self.rng = random.Random(seed)
        self.max_faults = max_faults
        self.delay_s, self.slow_s, self.hang_s = delay_s, slow_s, hang_s
        self.usage = usage
        self.responder = responder
        self.fault_tasks = fault_tasks
        self.lock = threading.Lock()
        self.fault_count: Counter = Counter()
        self.faults_by_key: Counter = Counter()
        self.billed_by_key: Counter = Counter()
        self.billed_prompt_tokens = 0
        self.billed_completion_tokens = 0
        self.requests = 0
        self.auth_headers: set[str] = set()
        self.fail_all: int | None = None  # when set, answer every request with this HTTP status
        self.fail_after: int | None = None  # after this many billed answers, behave as fail_all=503
        self._server: ThreadingHTTPServer | None = None

    # --- accounting ---------------------------------------------------------------------------
    @property
    def billed_requests(self) -> int:
        return sum(self.billed_by_key.values())

    @staticmethod
    def count_tokens(text: str) -> int:
        return len(text.split())

    def _pick_fault(self, key: str, task: str) -> str | None:
        with self.lock:
            if self.fault_tasks is not None and task not in self.fault_tasks:
                return None
            if self.faults_by_key[key] >= self.max_faults:
                return None
            r, acc = self.rng.random(), 0.0
            for name, p in self.faults.items():
                acc += p
                if r < acc:
                    if name != "wrong_tags" or task in ("render", "edit", "transform"):
                        self.faults_by_key[key] += 1
                        self.fault_count[name] += 1
                        return name
                    return None
            return None

    # --- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> "FaultServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, port: int = 0) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with server.lock:
                    server.requests += 1
                if self.headers.get("Authorization"):
                    server.auth_headers.add(self.headers["Authorization"])
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, b'{"error": "not found"}')
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    return self._send(400, b'{"error": "bad json"}')
                if server.fail_after is not None and server.billed_requests >= server.fail_after:
                    return self._send(503, b'{"error": "overloaded"}')
                if server.fail_all is not None:
                    return self._send(server.fail_all, b'{"error": "forced"}')
                system = next((m.get("content", "") for m in body.get("messages", []) if m.get("role") == "system"), "")
                task = (re.search(r"^Task: (\w+)", system, flags=re.M) or [None, "chat"])[1]
                scheme = (re.search(r"^Scheme: (\S+)", system, flags=re.M) or [None, "seed"])[1]
                key = _key(body)
                fault = server._pick_fault(key, task)
                if server.delay_s:
                    time.sleep(server.delay_s)
                if fault == "429":
                    return self._send(429, b'{"error": "rate limited"}', {"Retry-After": "0"})
                if fault == "500":
                    return self._send(500, b'{"error": "boom"}')
                if fault == "cut":
                    return self._cut()
                if fault == "hang":
                    time.sleep(server.hang_s)
                    return self._cut()
                if fault == "malformed":
                    return self._send(200, b'{"id": "x", "choices": [{"message": {"content": "trunc')
                if fault == "slow":
                    time.sleep(server.slow_s)
                text = server.responder(body)
                if fault == "wrong_tags":
                    text = _break_tags(text, scheme)
                prompt = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
                pt, ct = server.count_tokens(prompt), server.count_tokens(text)
                with server.lock:
                    n = sum(server.billed_by_key.values())
                payload = {"id": f"chatcmpl-{n}", "object": "chat.completion", "model": body.get("model", ""),
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
                if server.usage:
                    payload["usage"] = {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}
                data = json.dumps(payload).encode("utf-8")
                try:
                    self._send(200, data)
                except OSError:
                    return  # the client hung up: nothing delivered, nothing billed
                with server.lock:
                    server.billed_by_key[key] += 1
                    server.billed_prompt_tokens += pt
                    server.billed_completion_tokens += ct

            def _send(self, status: int, data: bytes, headers: dict | None = None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()

            def _cut(self):
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 128

        self._server = Server(("127.0.0.1", port), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8011)
    for f in FAULTS:
        ap.add_argument(f"--p{f.replace('_', '-')}", type=float, default=0.0, dest=f"p_{f}")
    ap.add_argument("--delay-s", type=float, default=0.0)
    a = ap.parse_args()
    faults = {f: getattr(a, f"p_{f}") for f in FAULTS if getattr(a, f"p_{f}")}
    srv = FaultServer(faults, delay_s=a.delay_s)
    srv.start(a.port)
    print(f"fault server on {srv.url} (faults {faults})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":
    main()
