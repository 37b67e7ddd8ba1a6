"""The request cache: content keys, hit/miss counts, and several processes writing one cache."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
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


def test_opening_a_new_cache_while_another_process_switches_it_to_wal(tmp_path):
    """Two shard tasks opening one new cache at the same moment: while the first switches the new
    file to WAL it holds a write lock, which SQLite makes the second's switch fail on at once,
    without waiting (CI failed a build on it: "database is locked"). The opener waits instead."""
    path = tmp_path / "new.sqlite"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # the write lock a switch to WAL holds, on a still-new file
    threading.Timer(0.5, other.execute, ("COMMIT",)).start()
    started = time.monotonic()
    with RequestCache(path, timeout_s=30) as cache:
        cache.put("k", {"text": "v"})
        assert cache.get("k") == {"text": "v"}
    assert time.monotonic() - started >= 0.4  # it waited for the lock rather than going around it
    other.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
