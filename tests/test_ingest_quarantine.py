"""A corrupted-input corpus: zero crashes, every bad row quarantined with a reason, nothing lost."""

from __future__ import annotations

import gzip
import json

import datasets
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.ingest import ingest_input
from pipeline.recipe import IngestConfig, InputSpec
from pipeline.shards import list_shards


def real_hh_lines(real_data, n):
    with gzip.open(real_data / "preference/hh-rlhf_harmless-base_test.jsonl.gz", "rb") as f:
        return [next(f) for _ in range(n)]


def run(tmp_path, path, **cfg):
    out = tmp_path / "out"
    stats = ingest_input(InputSpec(path=str(path)), IngestConfig(**cfg), out)
    kept = pl.read_parquet(list_shards(out)) if list_shards(out) else pl.DataFrame()
    dropped_files = sorted(out.glob("dropped-ingest-*.parquet"))
    dropped = pl.read_parquet(dropped_files) if dropped_files else pl.DataFrame()
    assert stats.rows_in == stats.rows_out + stats.rows_dropped
    assert stats.rows_out == len(kept) and stats.rows_dropped == len(dropped)
    return stats, kept, dropped


def test_corrupted_corpus(real_data, tmp_path):
    good = real_hh_lines(real_data, 5)
    bad = [
        good[0][: len(good[0]) // 2] + b"\n",  # truncated JSON
        json.dumps({"chosen": 42, "rejected": "\n\nHuman: hi\n\nAssistant: yo"}).encode() + b"\n",  # wrong type
        json.dumps({"messages": []}).encode() + b"\n",  # empty messages
        json.dumps({"messages": [{"role": "user", "content": "   "}]}).encode() + b"\n",  # empty content
        json.dumps({"messages": [{"role": "assistant", "content": "hi"},
                                 {"role": "user", "content": "yo"}]}).encode() + b"\n",  # role order
        b'{"prompt": "caf\xe9 au lait"}\n',  # invalid UTF-8
        json.dumps({"prompt": "x" * (10 * 1024 * 1024)}).encode() + b"\n",  # a 10 MB line
        b"[1, 2, 3]\n",  # not an object
        json.dumps({"unrelated": True}).encode() + b"\n",  # no adapter fits
    ]
    path = tmp_path / "corrupt.jsonl"
    lines = [good[0], bad[0], good[1], *bad[1:], good[2]]
    path.write_bytes(b"".join(lines))

    stats, kept, dropped = run(tmp_path, path, max_line_bytes=1024 * 1024)
    assert stats.rows_in == len(lines)
    assert stats.rows_out == 3
    reasons = dropped.sort("source_row")["reason"].to_list()
    assert reasons == ["bad_json", "non_string_content", "empty_messages", "empty_content",
                       "bad_role_order", "undecodable_bytes", "oversize_line", "not_an_object",
                       "unknown_format"]
    undecodable = dropped.filter(pl.col("reason") == "undecodable_bytes").row(0, named=True)
    assert undecodable["raw"] == b'{"prompt": "caf\xe9 au lait"}\n'  # the original bytes are kept
    assert dropped["source"].unique().to_list() == ["corrupt.jsonl"]
    assert kept["source_row"].to_list() == [0, 2, 11]


def test_oversize_text_limit_is_configurable(real_data, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(real_hh_lines(real_data, 20)))
    _, kept, dropped = run(tmp_path, path, max_text_chars=200)
    assert len(dropped) > 0 and set(dropped["reason"]) >= {"oversize_text"}
    for msgs in kept["messages"]:
        assert all(len(m["content"]) <= 200 for m in msgs)


def test_truncated_gzip_keeps_rows_before_the_break(real_data, tmp_path):
    data = gzip.compress(b"".join(real_hh_lines(real_data, 50)))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) * 2 // 3])
    stats, kept, dropped = run(tmp_path, path)
    assert 0 < stats.rows_out < 50
    assert dropped["reason"].to_list()[-1] == "truncated_file"


def test_parquet_and_hf_dataset_directory_inputs(real_data, tmp_path):
    rows = [json.loads(line) for line in real_hh_lines(real_data, 30)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    stats_pq, kept_pq, _ = run(tmp_path / "a", tmp_path / "in.parquet")
    ds_dir = tmp_path / "hfds"
    datasets.Dataset.from_list(rows).save_to_disk(str(ds_dir))
    stats_hf, kept_hf, _ = run(tmp_path / "b", ds_dir)
    assert stats_pq.rows_in == stats_hf.rows_in == 30
    assert kept_pq["id"].to_list() == kept_hf["id"].to_list()


def test_shards_hold_at_most_shard_rows(real_data, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(real_hh_lines(real_data, 45)))
    out = tmp_path / "out"
    ingest_input(InputSpec(path=str(path)), IngestConfig(shard_rows=10), out)
    sizes = [pq.ParquetFile(p).metadata.num_rows for p in list_shards(out)]
    assert all(s <= 10 for s in sizes) and len(sizes) >= 4
