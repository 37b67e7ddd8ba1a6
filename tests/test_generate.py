"""The generate stage over real conversations (hh-rlhf, AlpacaEval): through a faulty OpenAI
server, with an API key, and killed half-way on the vLLM CPU engine."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.cache import RequestCache, count_results
from pipeline.engines.http_engine import EngineUnavailable, HttpEngine
from pipeline.generate import GenerateConfig, GeneratorSpec, generate_shard
from pipeline.ingest.stage import ingest_input
from pipeline.recipe import IngestConfig, InputSpec
from pipeline.shards import list_shards
from pipeline.tables import CANDIDATE

REPO = Path(__file__).resolve().parents[1]


def _conversations(real_data: Path, out: Path, name: str, rows: int) -> Path:
    ingest_input(InputSpec(path=str(real_data / name), max_rows=rows), IngestConfig(), out, stage="ingest")
    (shard,) = list_shards(out)
    return shard


@pytest.fixture(scope="module")
def hh_shard(tmp_path_factory, real_data) -> Path:
    """8 real hh-rlhf conversations (multi-turn prompts, chosen + rejected responses)."""
    return _conversations(real_data, tmp_path_factory.mktemp("hh"),
                          "preference/hh-rlhf_harmless-base_test.jsonl.gz", 8)


def _candidates(out_dir: Path) -> list[dict]:
    (part,) = list_shards(out_dir)
    table = pq.read_table(part)
    assert table.schema.equals(CANDIDATE)
    # latency is a measurement of the run, not a result: everything else must be identical
    return table.drop_columns(["latency_s"]).to_pylist()


def _http_config(urls: list[str], **spec) -> GenerateConfig:
    return GenerateConfig(models=[GeneratorSpec(name="srv", engine="http", base_urls=urls, k=3,
                                                max_tokens=6, **spec)],
                          include_source_responses=True, batch_size=8)


def _engine(urls, **kw) -> HttpEngine:
    kw = {"timeout_s": 1.0, "backoff_s": 0.05, "max_backoff_s": 2.0, **kw}
    return HttpEngine("srv", urls, **kw)


def test_generate_through_faults_equals_fault_free_run(fault_server_factory, hh_shard, tmp_path):
    first = fault_server_factory(faults=True)
    faulty = [first, fault_server_factory(faults=True).join(first)]  # a fleet of two
    clean = fault_server_factory(faults=False)
    config = _http_config([s.url for s in faulty])

    with _engine([s.url for s in faulty]) as engine:
        cache = RequestCache(tmp_path / "faulty.sqlite")
        stats = generate_shard(hh_shard, tmp_path / "faulty", config, {"srv": engine}, cache, stage="generate")
    with _engine([clean.url]) as engine:
        clean_stats = generate_shard(hh_shard, tmp_path / "clean", config, {"srv": engine},
                                     RequestCache(tmp_path / "clean.sqlite"), stage="generate")

    # every kind of fault was served, on both servers of the fleet, and retried through
    for kind in ("500", "429", "stall", "drop", "malformed"):
        assert faulty[0].count(kind) + faulty[1].count(kind) >= 1, kind
    assert faulty[0].count("ok") > 0 and faulty[1].count("ok") > 0
    # Retry-After was honoured: the retry of a 429'd request came no sooner than it asked
    gaps = [t[1] - t[0] for h, t in faulty[0].times.items()
            if faulty[0].fault_of[h] == "429" and len(t) > 1]
    assert gaps and min(gaps) >= faulty[0].retry_after_s * 0.95

    got, want = _candidates(tmp_path / "faulty"), _candidates(tmp_path / "clean")
    assert got == want
    assert stats.to_dict() == clean_stats.to_dict()
    assert (stats.rows_in, stats.rows_out, stats.rows_dropped) == (8, 8, 0)
    assert stats.outputs_written == len(got) == 8 * (3 + 2)  # k=3 + chosen/rejected
    assert cache.misses == 8 * 3 and cache.hits == 0 and len(cache) == 8 * 3

    on = [c for c in got if c["origin"] == "on_policy"]
    off = [c for c in got if c["origin"] == "off_policy"]
    assert sorted({c["source_label"] for c in off}) == ["chosen", "rejected"]
    assert all(c["finish_reason"] == "source" and c["params"] is None for c in off)
    assert {(c["conversation_id"], c["sample_index"]) for c in on} == {
        (cid, i) for cid in {c["conversation_id"] for c in got} for i in range(3)}
    assert len({c["candidate_id"] for c in got}) == len(got)
    # empty and truncated generations are kept and flagged
    for c in on:
        assert ("empty" in c["flags"]) == (c["response"].strip() == "")
        assert ("truncated" in c["flags"]) == (c["finish_reason"] == "length")
        assert c["completion_tokens"] == len(c["response"].split())
    assert any("empty" in c["flags"] for c in on) and any("truncated" in c["flags"] for c in on)

    # a rerun on the same cache asks the server nothing and writes the same candidates
    served = clean.count("ok")
    with _engine([clean.url]) as engine:
        again = RequestCache(tmp_path / "faulty.sqlite")
        generate_shard(hh_shard, tmp_path / "again", config, {"srv": engine}, again, stage="generate")
    assert clean.count("ok") == served
    assert (again.hits, again.misses) == (8 * 3, 0)
    assert _candidates(tmp_path / "again") == got


def test_generate_fails_clearly_when_server_stays_down(fault_server_factory, hh_shard, tmp_path):
    server = fault_server_factory()
    server.down = True
    config = _http_config([server.url])
    start = time.monotonic()
    with _engine([server.url], max_attempts=4) as engine:
        with pytest.raises(EngineUnavailable, match=r"gave up .* after 4 attempts.*HTTP 503"):
            generate_shard(hh_shard, tmp_path / "out", config, {"srv": engine},
                           RequestCache(tmp_path / "c.sqlite"), stage="generate")
    assert time.monotonic() - start < 120  # an error, not a hang (generous bound)
    assert server.count("down") >= 4
    assert list_shards(tmp_path / "out") == []  # nothing half-written

    # nothing listening at all (connection refused) fails the same way
    dead = "http://127.0.0.1:9/v1"
    with _engine([dead], max_attempts=3) as engine:
        with pytest.raises(EngineUnavailable, match="after 3 attempts.*ConnectError"):
            generate_shard(hh_shard, tmp_path / "out2", config, {"srv": engine},
                           RequestCache(tmp_path / "c2.sqlite"), stage="generate")


def test_rejected_prompts_are_not_retried_and_drop_only_their_conversation(
        fault_server_factory, hh_shard, tmp_path):
    # the server refuses (400) prompts longer than its context, as vLLM does
    server = fault_server_factory(max_prompt_words=60)
    config = GenerateConfig(models=[GeneratorSpec(name="srv", engine="http",
                                                  base_urls=[server.url], k=2, max_tokens=6)],
                            batch_size=8)
    with _engine([server.url]) as engine:
        stats = generate_shard(hh_shard, tmp_path / "out", config, {"srv": engine},
                               RequestCache(tmp_path / "c.sqlite"), stage="generate")
    rejected = server.count("rejected")
    assert rejected > 0 and server.count("ok") > 0
    assert rejected == 2 * stats.rows_dropped  # each refused once per sample, never retried
    assert stats.reasons == {"generation_failed": stats.rows_dropped}
    dropped = pq.read_table(next((tmp_path / "out").glob("dropped-generate-*.parquet"))).to_pylist()
    assert len(dropped) == stats.rows_dropped
    assert all("maximum context length" in d["detail"] and d["row_id"] for d in dropped)
    assert stats.outputs_written == 2 * stats.rows_out == len(_candidates(tmp_path / "out"))

    # with the source's responses in the mix, those conversations keep their off-policy ones
    mixed = config.model_copy(update={"include_source_responses": True})
    with _engine([server.url]) as engine:
        stats = generate_shard(hh_shard, tmp_path / "mixed", config=mixed, engines={"srv": engine},
                               cache=RequestCache(tmp_path / "c.sqlite"), stage="generate")
    assert stats.rows_dropped == 0 and stats.rows_out == 8


def test_api_key_never_written_logged_or_shown(fault_server_factory, hh_shard, tmp_path,
                                               monkeypatch, caplog):
    secret = "sk-test-3f9c1b7e5d2a8c4f"
    monkeypatch.setenv("PREFPIPE_TEST_KEY", secret)
    server = fault_server_factory(faults=True, api_key=secret)
    config = _http_config([server.url], api_key_env="PREFPIPE_TEST_KEY")
    caplog.set_level(logging.DEBUG)  # everything, httpx/httpcore included
    work = tmp_path / "work"
    with _engine([server.url], api_key_env="PREFPIPE_TEST_KEY") as engine:
        text = repr(engine) + str(engine) + repr(config) + config.model_dump_json()
        stats = generate_shard(hh_shard, work / "out", config, {"srv": engine},
                               RequestCache.in_work_dir(work), stage="generate")
    assert server.received_keys == {secret}  # the key did reach the server
    assert stats.rows_out == 8 and server.count("unauthorized") == 0

    errors = []
    monkeypatch.setenv("PREFPIPE_TEST_KEY", secret + "-wrong")  # 401: not retried, reported
    with _engine([server.url], api_key_env="PREFPIPE_TEST_KEY") as engine:
        try:
            engine.generate(engine_requests(hh_shard))
        except Exception as err:  # noqa: BLE001 - the text is what is checked
            errors.append(f"{err!r} {err}")
    server.down = True
    monkeypatch.setenv("PREFPIPE_TEST_KEY", secret)
    with _engine([server.url], api_key_env="PREFPIPE_TEST_KEY", max_attempts=2) as engine:
        try:
            engine.generate(engine_requests(hh_shard))
        except EngineUnavailable as err:
            errors.append(f"{err!r} {err}")
    assert len(errors) == 2 and "HTTP 401" in errors[0]

    files = [p for p in work.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and any("sqlite" in p.name for p in files)
    for path in files:
        assert secret.encode() not in path.read_bytes(), path
    assert secret not in text
    assert secret not in caplog.text and caplog.text  # logs were captured, and hold no key
    assert all(secret not in e for e in errors)


def engine_requests(shard: Path):
    from pipeline.engines.base import ChatRequest, SamplingParams
    from pipeline.shards import iter_rows

    row = next(iter_rows(shard))
    return [ChatRequest(tuple((m["role"], m["content"]) for m in row["prompt"]),
                        SamplingParams(max_tokens=4))]


# -- kill a run half-way, rerun: only the unfinished requests are generated ------------------

_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pipeline.cache import RequestCache
    from pipeline.engines.vllm_engine import VLLMEngine
    from pipeline.generate import GenerateConfig, generate_shard

    if __name__ == "__main__":
        model, shard, out, cache, config = sys.argv[1:]
        engine = VLLMEngine(model, dtype="float32", max_model_len=1024)
        config = GenerateConfig.model_validate_json(config)
        generate_shard(Path(shard), Path(out), config, {"tiny": engine}, RequestCache(cache), stage="generate")
        print("FINISHED", flush=True)
""")


def test_killed_run_resumes_without_redoing_finished_requests(tiny_model_dir, tiny_vllm_engine,
                                                               real_data, tmp_path):
    shard = _conversations(real_data, tmp_path / "conv", "prompts/alpaca_eval_alpaca-7b_outputs.json",
                           16)
    config = GenerateConfig(models=[GeneratorSpec(name="tiny", engine="vllm", k=2, max_tokens=32,
                                                  temperature=1.0, seed=7)],
                            batch_size=4)
    total = 16 * 2
    cache_path = tmp_path / "cache.sqlite"
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen(
        [sys.executable, str(script), str(tiny_model_dir), str(shard), str(tmp_path / "killed"),
         str(cache_path), config.model_dump_json()],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while (cached := count_results(cache_path) if cache_path.exists() else 0) < 4:
            assert child.poll() is None, child.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "child produced no results in 300 s"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=60)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    cached = count_results(cache_path)
    assert 4 <= cached < total
    assert list_shards(tmp_path / "killed") == []

    # rerun: the engine is asked only for what the killed run had not finished
    resumed = RequestCache(cache_path)
    stats = generate_shard(shard, tmp_path / "resumed", config, {"tiny": tiny_vllm_engine}, resumed, stage="generate")
    assert (resumed.hits, resumed.misses, resumed.writes) == (cached, total - cached, total - cached)
    assert len(resumed) == total and stats.outputs_written == total

    # the same run never interrupted (fresh cache) gives the same candidates
    fresh = RequestCache(tmp_path / "fresh.sqlite")
    generate_shard(shard, tmp_path / "fresh", config, {"tiny": tiny_vllm_engine}, fresh, stage="generate")
    assert fresh.misses == total
    assert _candidates(tmp_path / "resumed") == _candidates(tmp_path / "fresh")
