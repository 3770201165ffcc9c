"""The synth client against a real fault-injecting server on 127.0.0.1.

    .venv/bin/pytest -q tests/test_synth_client.py
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fault_server import FaultServer  # noqa: E402

from prealign.errors import PrealignError  # noqa: E402
from prealign.synth.client import ChatClient, ClientConfig, RequestFailed, request_key  # noqa: E402

MSG = [{"role": "system", "content": "Task: chat"}, {"role": "user", "content": "hello"}]


def cfg(srv, tmp_path=None, **kw) -> ClientConfig:
    base = dict(endpoint=srv.url, model="tiny", concurrency=4, timeout_s=1.0, connect_timeout_s=1.0,
                max_retries=6, backoff_base_s=0.001, backoff_max_s=0.01,
                cache_dir=str(tmp_path / "cache") if tmp_path else None)
    base.update(kw)
    return ClientConfig(**base)


def ask_many(config: ClientConfig, n: int, results: list | None = None):
    async def go():
        async with ChatClient(config, on_result=(lambda c, p, m: results.append((c, p, m))) if results is not None else None) as c:
            return await asyncio.gather(*(c.complete([MSG[0], {"role": "user", "content": f"q{i}"}], pass_name="t",
                                                     meta={"i": i}) for i in range(n)))
    return asyncio.run(go())


@pytest.mark.parametrize("fault", ["429", "500", "cut", "malformed", "hang", "slow"])
def test_every_fault_is_retried_and_billed_once(fault, tmp_path):
    with FaultServer({fault: 0.6}, seed=3, max_faults=2, slow_s=0.05, hang_s=1.5) as srv:
        out = ask_many(cfg(srv, timeout_s=0.5 if fault == "hang" else 2.0), 12)
        assert srv.fault_count[fault] > 0
        assert len(out) == 12 and all(c.text == "Hello." and not c.cached for c in out)
        assert srv.billed_requests == 12 and set(srv.billed_by_key.values()) == {1}
        assert sum(c.prompt_tokens for c in out) == srv.billed_prompt_tokens
        assert sum(c.completion_tokens for c in out) == srv.billed_completion_tokens
        # a slow answer within the timeout is simply awaited; every other fault costs a retry
        assert (max(c.attempts for c in out) > 1) == (fault != "slow")


def test_cache_means_a_rerun_never_pays(tmp_path):
    with FaultServer() as srv:
        first = ask_many(cfg(srv, tmp_path), 5)
        again = ask_many(cfg(srv, tmp_path), 5)
        assert srv.billed_requests == 5
        assert all(c.cached for c in again) and not any(c.cached for c in first)
        assert [c.text for c in again] == [c.text for c in first]
        assert [c.prompt_tokens for c in again] == [c.prompt_tokens for c in first]  # usage kept for costing


def test_identical_requests_in_flight_pay_once():
    results: list = []
    with FaultServer(delay_s=0.05) as srv:
        async def go():
            async with ChatClient(cfg(srv), on_result=lambda c, p, m: results.append(c)) as c:
                return await asyncio.gather(*(c.complete(MSG, pass_name="t") for _ in range(5)))
        out = asyncio.run(go())
        assert srv.billed_requests == 1
        assert sum(not c.cached for c in out) == 1 and len(results) == 5


def test_exhausted_retries_raise_a_clear_error():
    with FaultServer() as srv:
        srv.fail_all = 503
        with pytest.raises(RequestFailed, match="after 3 attempts.*HTTP 503"):
            ask_many(cfg(srv, max_retries=2), 1)
        assert srv.requests == 3


def test_client_errors_are_not_retried():
    with FaultServer() as srv:
        srv.fail_all = 401
        with pytest.raises(PrealignError, match="HTTP 401"):
            ask_many(cfg(srv), 1)
        assert srv.requests == 1


def test_api_key_is_sent_but_never_stored(tmp_path, monkeypatch):
    secret = "sk-test-SECRET-123"
    monkeypatch.setenv("PREALIGN_TEST_KEY", secret)
    results: list = []
    with FaultServer() as srv:
        c = cfg(srv, tmp_path, api_key_env="PREALIGN_TEST_KEY")
        ask_many(c, 2, results)
        assert srv.auth_headers == {f"Bearer {secret}"}
    assert secret not in repr(ChatClient.__new__(ChatClient).__class__) and secret not in repr(c)
    stored = "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    assert stored and secret not in stored and secret not in json.dumps([r[0].__dict__ for r in results])


def test_missing_usage_is_estimated_and_flagged():
    with FaultServer(usage=False) as srv:
        (c,) = ask_many(cfg(srv), 1)
        assert c.usage_estimated and c.prompt_tokens > 0 and c.completion_tokens > 0


def test_request_key_ignores_dict_order_but_not_content():
    a = {"model": "m", "messages": MSG, "temperature": 0.0}
    b = {"temperature": 0.0, "messages": MSG, "model": "m"}
    assert request_key(a) == request_key(b)
    assert request_key(a) != request_key({**a, "temperature": 0.1})


def test_bad_config_is_one_clear_error():
    with pytest.raises(PrealignError, match="not an http"):
        ClientConfig(endpoint="localhost:8000", model="m")
    with pytest.raises(PrealignError, match="concurrency"):
        ClientConfig(endpoint="http://x/v1", model="m", concurrency=0)
