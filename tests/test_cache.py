"""The request cache: content keys, hit/miss counts, and several processes writing one cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline.cache import RequestCache, count_results, request_key

REPO = Path(__file__).resolve().parents[1]

_WRITER = """
import sys
from pipeline.cache import RequestCache
path, start, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cache = RequestCache(path)
for i in range(start, stop):  # one transaction per result, as the generate stage stores them
    cache.put(f"k{i}", {"text": f"v{i}", "writer": start})
"""


def test_keys_hits_and_misses(tmp_path):
    params = {"temperature": 0.7, "top_p": 1.0, "max_tokens": 8, "seed": 3, "stop": []}
    key = request_key("vllm", "m", params, (("user", "hi"),), None, 0)
    assert key == request_key("vllm", "m", dict(reversed(params.items())), (("user", "hi"),), None, 0)
    others = [request_key("http", "m", params, (("user", "hi"),), None, 0),
              request_key("vllm", "m2", params, (("user", "hi"),), None, 0),
              request_key("vllm", "m", {**params, "seed": 4}, (("user", "hi"),), None, 0),
              request_key("vllm", "m", params, (("user", "hi!"),), None, 0),
              request_key("vllm", "m", params, (("user", "hi"),), "be brief", 0),
              request_key("vllm", "m", params, (("user", "hi"),), None, 1)]
    assert len({key, *others}) == 7

    with RequestCache(tmp_path / "c.sqlite") as cache:
        assert cache.get_many([key, others[0]]) == {}
        cache.put(key, {"text": "hello", "tokens": [1, 2]})
        cache.put(key, {"text": "second write loses"})
        assert cache.get_many([key, others[0]]) == {key: {"text": "hello", "tokens": [1, 2]}}
        assert (cache.hits, cache.misses) == (1, 3)
    with RequestCache(tmp_path / "c.sqlite") as reopened:  # persisted
        assert reopened.get(key) == {"text": "hello", "tokens": [1, 2]} and len(reopened) == 1


def test_concurrent_processes_share_one_cache(tmp_path):
    path = tmp_path / "shared.sqlite"
    RequestCache(path).close()
    ranges = [(0, 400), (200, 600), (400, 800)]  # overlapping: the same keys raced for
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(a), str(b)], cwd=REPO,
                              stderr=subprocess.PIPE) for a, b in ranges]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    assert count_results(path) == 800
    with RequestCache(path) as cache:
        got = cache.get_many(f"k{i}" for i in range(800))
    assert {k: v["text"] for k, v in got.items()} == {f"k{i}": f"v{i}" for i in range(800)}
