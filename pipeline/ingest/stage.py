"""The ingest stage: one input path -> conversation shards + a quarantine of malformed rows."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.ingest.adapters import Malformed, adapt
from pipeline.ingest.readers import read_rows
from pipeline.progress import report
from pipeline.config import IngestConfig, InputSpec
from pipeline.shards import DroppedWriter, ShardWriter, _to_text
from pipeline.stats import StageStats
from pipeline.tables import CONVERSATION



def row_text(value: object) -> str | None:
    """A quarantined row as text (as `DroppedWriter` writes it), with ASCII escapes instead when it
    holds text Parquet cannot store (lone surrogates); None when it cannot be serialised at all."""
    try:
        text = _to_text(value)
        if text is not None:
            text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return json.dumps(value, default=str)
    except (RecursionError, ValueError):
        return None


def ingest_input(spec: InputSpec, config: IngestConfig, out_dir: Path, start_offset: int = 0,
                 start_index: int = 0, *, stage: str) -> StageStats:
    """Read `spec.path` row by row; write `part-*.parquet` and `dropped-ingest-*.parquet`.

    `start_offset`/`start_index`: read a JSON-lines file from that byte (incremental runs)."""
    stats = StageStats(stage)
    out = ShardWriter(out_dir, CONVERSATION, shard_rows=config.shard_rows)
    dropped = DroppedWriter(out_dir, stage, shard_rows=config.shard_rows)
    for n, raw in enumerate(read_rows(Path(spec.path), config.max_line_bytes,
                                            start_offset, start_index)):
        if spec.max_rows is not None and n >= spec.max_rows:
            break
        where = {"source": raw.source, "source_row": raw.index}
        if raw.error:
            dropped.drop(raw.error, detail=raw.detail, raw=raw.raw, **where)
            stats.drop(raw.error)
        else:
            try:
                fmt, conv = adapt(raw.value, spec.format, config.max_text_chars)
            except Malformed as err:
                dropped.drop(err.reason, detail=err.detail, row=row_text(raw.value), **where)
                stats.drop(err.reason)
            except RecursionError:
                dropped.drop("too_deeply_nested", row=None, **where)
                stats.drop("too_deeply_nested")
            else:
                out.write({**conv, **where, "format": fmt})
                stats.keep()
        if n % 1000 == 999:
            report(stage, 1000)
    out.close()
    dropped.close()
    return stats.check()
