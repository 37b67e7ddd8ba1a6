"""The request cache: every model request keyed by its content, every result stored as it finishes.

One SQLite database (WAL journal) per work directory. A result is committed the moment it is
`put`, so a run killed half-way, rerun, asks the engine only for what is missing. Several
processes may share one cache: WAL lets readers run beside the one writer, and writers wait
(`busy_timeout`) rather than fail. Switching a new file to WAL is the one step SQLite answers
"database is locked" at once, without waiting, when another process opens the same new file at
that moment: it is retried until `timeout_s`. Keep the file on a local disk (SQLite locking is
unreliable on network file systems).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tenacity import retry, retry_if_exception, stop_after_delay, wait_random_exponential

from pipeline.ids import canonical_json, content_id

CACHE_FILE = "requests.sqlite"


def request_key(engine_kind: str, model_id: str, params: dict, messages: Any,
                system: str | None, sample_index: int) -> str:
    """Content key of one request sample: same engine, model, parameters (seed included), prompt
    and sample index -> same key."""
    return content_id("q", engine_kind, model_id, params, messages, system, sample_index)


class RequestCache:
    """Persistent map of request key -> JSON result, with hit/miss counters (per instance)."""

    def __init__(self, path: str | Path, timeout_s: float = 120.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None,
                                     check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        _use_wal(self._conn, timeout_s)
        # durable against a killed process (not against power loss), and fast
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        # Persistent across processes: results offered for a key that was already stored, i.e.
        # work a resumed run did again although it was finished (should stay 0).
        self._conn.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        self.hits = 0
        self.misses = 0
        self.writes = 0

    @classmethod
    def in_work_dir(cls, work_root: str | Path) -> "RequestCache":
        return cls(Path(work_root) / "cache" / CACHE_FILE)

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Cached results of `keys` (missing keys are absent); counts hits and misses."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, Any] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for key, value in self._conn.execute(
                        f"SELECT key, value FROM results WHERE key IN ({marks})", chunk):
                    found[key] = json.loads(value)
            self.hits += len(found)
            self.misses += len(keys) - len(found)
        return found

    def get(self, key: str) -> Any | None:
        return self.get_many([key]).get(key)

    def put_many(self, items: Iterable[tuple[str, Any]]) -> None:
        """Store results in one transaction. The first result stored for a key wins."""
        rows = [(k, canonical_json(v)) for k, v in items]
        if not rows:
            return
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                before = self._conn.total_changes
                self._conn.executemany("INSERT OR IGNORE INTO results VALUES (?, ?)", rows)
                repeated = len(rows) - (self._conn.total_changes - before)
                if repeated:
                    self._conn.execute(
                        "INSERT INTO counters VALUES ('recomputed', ?) "
                        "ON CONFLICT(name) DO UPDATE SET n = n + excluded.n", (repeated,))
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            self.writes += len(rows)

    def put(self, key: str, value: Any) -> None:
        self.put_many([(key, value)])

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM results").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "RequestCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RequestCache({str(self.path)!r})"


def _locked(err: BaseException) -> bool:
    return isinstance(err, sqlite3.OperationalError) and "locked" in str(err)


def _use_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """Put the database in WAL mode (a no-op read when it already is), retrying while another
    connection holds the lock the switch needs: SQLite's busy handler does not cover it."""
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
        return
    retry(retry=retry_if_exception(_locked), stop=stop_after_delay(timeout_s),
          wait=wait_random_exponential(multiplier=0.01, max=0.5), reraise=True)(
        conn.execute)("PRAGMA journal_mode=WAL")


def recomputed(path: str | Path) -> int:
    """How many finished requests were computed again by a later run (0 when resume works)."""
    conn = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, timeout=30)
    try:
        row = conn.execute("SELECT n FROM counters WHERE name = 'recomputed'").fetchone()
    finally:
        conn.close()
    return row[0] if row else 0


def count_results(path: str | Path) -> int:
    """Number of stored results, read without holding the cache open (for progress and tests)."""
    conn = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT count(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()
