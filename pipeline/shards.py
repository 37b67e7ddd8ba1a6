"""Shard files: Parquet files of at most N rows, written and read in bounded memory.

A stage writes its output with `ShardWriter` and its drops with `DroppedWriter`; both only ever
hold one shard's rows. Stage outputs are content-keyed directories made visible by one rename
(`stage_output`), so a finished stage is never redone and a killed one leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.tables import DROPPED

DEFAULT_SHARD_ROWS = 1000
STATS_FILE = "_stats.json"


class ShardWriter:
    """Writes rows as `{prefix}-00000.parquet`, `{prefix}-00001.parquet`, ... of at most `shard_rows`."""

    def __init__(self, directory: Path, schema: pa.Schema, prefix: str = "part",
                 shard_rows: int = DEFAULT_SHARD_ROWS):
        if shard_rows < 1:
            raise ValueError("shard_rows must be >= 1")
        self.directory = Path(directory)
        self.schema = schema
        self.prefix = prefix
        self.shard_rows = shard_rows
        self.paths: list[Path] = []
        self.rows_written = 0
        self._buffer: list[dict] = []

    def write(self, row: dict) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self.prefix}-{len(self.paths):05d}.parquet"
        table = pa.Table.from_pylist(self._buffer, schema=self.schema)
        pq.write_table(table, path, compression="zstd")
        self.paths.append(path)
        self.rows_written += len(self._buffer)
        self._buffer = []

    def close(self) -> list[Path]:
        self.flush()
        return self.paths

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()


def _to_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


class DroppedWriter(ShardWriter):
    """The exclusion writer: every dropped row with its stage and reason."""

    def __init__(self, directory: Path, stage: str, shard_rows: int = DEFAULT_SHARD_ROWS):
        super().__init__(directory, DROPPED, prefix=f"dropped-{stage}", shard_rows=shard_rows)
        self.stage = stage

    def drop(self, reason: str, *, row: Any = None, raw: bytes | None = None, detail: str = "",
             source: str | None = None, source_row: int | None = None,
             row_id: str | None = None, match_id: str | None = None,
             conversation_id: str | None = None) -> None:
        self.write({
            "stage": self.stage, "reason": reason, "detail": detail, "source": source,
            "source_row": source_row, "conversation_id": conversation_id, "row_id": row_id,
            "match_id": match_id,
            "row": _to_text(row), "raw": raw,
        })


def iter_rows(paths: list[Path] | Path, batch_rows: int = 1000, columns: list[str] | None = None
              ) -> Iterator[dict]:
    """Rows of one or more Parquet shards, read a batch at a time."""
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
            yield from batch.to_pylist()


def count_rows(paths: list[Path]) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)


def list_shards(directory: Path, prefix: str = "part") -> list[Path]:
    return sorted(Path(directory).glob(f"{prefix}-*.parquet"))


@contextmanager
def stage_output(final_dir: Path) -> Iterator[Path]:
    """Yield a private temporary directory; on success rename it to `final_dir` in one step.

    If another process published `final_dir` first (same content key), its output wins and
    ours is discarded. On failure the temporary directory is removed.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = final_dir.parent / f".tmp-{final_dir.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.rename(tmp, final_dir)
        except OSError:
            if not (final_dir / STATS_FILE).exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_stats(directory: Path) -> dict | None:
    path = Path(directory) / STATS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def write_stats(directory: Path, stats: dict) -> None:
    (Path(directory) / STATS_FILE).write_text(json.dumps(stats, indent=2, sort_keys=True))
