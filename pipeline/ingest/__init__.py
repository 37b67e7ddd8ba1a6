"""Ingest: read input files in bounded memory, adapt each row to a canonical conversation,
quarantine malformed rows with a reason, and shard the result into Parquet."""

from pipeline.ingest.stage import ingest_input

__all__ = ["ingest_input"]
