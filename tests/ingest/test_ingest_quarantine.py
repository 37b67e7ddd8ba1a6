"""A corrupted-input corpus: zero crashes, every bad row quarantined with a reason, nothing lost."""

from __future__ import annotations

import gzip
import json
import os

import datasets
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.ingest import ingest_input
from pipeline.ingest.readers import InputPathError
from pipeline.recipe import IngestConfig, InputSpec, RecipeError, parse_recipe
from pipeline.shards import list_shards
from tests.helpers import cli


def real_hh_lines(real_data, n):
    with gzip.open(real_data / "preference/hh-rlhf_harmless-base_test.jsonl.gz", "rb") as f:
        return [next(f) for _ in range(n)]


def run(tmp_path, path, **cfg):
    out = tmp_path / "out"
    stats = ingest_input(InputSpec(path=str(path)), IngestConfig(**cfg), out, stage="ingest")
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
    ingest_input(InputSpec(path=str(path)), IngestConfig(shard_rows=10), out, stage="ingest")
    sizes = [pq.ParquetFile(p).metadata.num_rows for p in list_shards(out)]
    assert all(s <= 10 for s in sizes) and len(sizes) >= 4


# --- issue 14, item 3: ingest survives any bytes --------------------------------------------

GOOD = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})


def test_huge_integer_literal_quarantines_only_its_row(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text(f'{GOOD}\n{{"prompt": "x", "n": {"7" * 5000}}}\n{GOOD}\n')
    stats, kept, dropped = run(tmp_path, path)
    assert (stats.rows_in, stats.rows_out) == (3, 2)
    row = dropped.row(0, named=True)
    assert (row["source_row"], row["reason"]) == (1, "bad_json")
    assert "4300 digits" in row["detail"] and row["raw"].startswith(b'{"prompt": "x"')


def test_lone_surrogate_quarantines_only_its_row(tmp_path):
    path = tmp_path / "surrogates.jsonl"
    path.write_text("\n".join([GOOD, r'{"prompt": "a\ud800b"}', r'{"prompt": "ok", "meta": {"k\udc00": 1}}',
                               r'{"prompt": "a pair is fine: \ud83d\ude00"}', GOOD]) + "\n")
    stats, kept, dropped = run(tmp_path, path)
    assert (stats.rows_in, stats.rows_out) == (5, 3)
    assert dropped["reason"].to_list() == ["bad_text", "bad_text"]
    assert dropped["detail"].to_list() == ["lone surrogate in messages[0].content", "lone surrogate in metadata"]
    assert json.loads(dropped["row"][0]) == {"prompt": "a\ud800b"}  # kept, as ASCII-escaped JSON
    assert kept["prompt"].to_list()[1][0]["content"] == "a pair is fine: \U0001F600"


def test_utf8_bom_is_decoded(tmp_path):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "bom.jsonl").write_bytes(bom + f"{GOOD}\n{GOOD}\n".encode())
    (tmp_path / "a" / "bom.json").write_bytes(bom + f"[{GOOD}]".encode())
    stats, kept, _ = run(tmp_path, tmp_path / "a")
    assert (stats.rows_in, stats.rows_out) == (3, 3)
    assert kept["prompt"].to_list()[0] == [{"role": "user", "content": "hi"}]


def test_pretty_printed_array_saved_as_jsonl_is_read_as_an_array(tmp_path):
    rows = [{"prompt": f"question {i}", "tags": [i, {"k": None}]} for i in range(3)]
    text = json.dumps(rows, indent=2)
    (tmp_path / "pretty.jsonl").write_text(text)
    stats, kept, _ = run(tmp_path / "a", tmp_path / "pretty.jsonl")
    assert (stats.rows_in, stats.rows_out) == (3, 3)
    assert [p[0]["content"] for p in kept["prompt"].to_list()] == ["question 0", "question 1", "question 2"]
    # A broken one keeps the items before the break and gives one file-level reason.
    (tmp_path / "cut.jsonl").write_text(text[: len(text) - 30])
    stats, kept, dropped = run(tmp_path / "b", tmp_path / "cut.jsonl")
    assert (stats.rows_out, dropped["reason"].to_list()) == (2, ["bad_json"])
    assert dropped["detail"][0].startswith("JSON array unparseable from item 2: ")
    # A whole array on one line is still one JSON-lines row.
    (tmp_path / "rows.jsonl").write_text(f"[1, 2]\n{GOOD}\n")
    _, _, dropped = run(tmp_path / "c", tmp_path / "rows.jsonl")
    assert dropped["reason"].to_list() == ["not_an_object"]


def test_deeply_nested_array_item_quarantines_only_itself(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text(f'[{GOOD}, {"[" * 5000}{"]" * 5000}, {GOOD}]')
    stats, kept, dropped = run(tmp_path, path)
    assert (stats.rows_in, stats.rows_out) == (3, 2)
    assert dropped.select("source_row", "reason").rows() == [(1, "too_deeply_nested")]


def test_corrupt_gzip_stream_is_quarantined(tmp_path):
    data = bytearray(gzip.compress(f"{GOOD}\n".encode() * 200))
    for i in range(40, len(data), 97):
        data[i] ^= 0x55
    path = tmp_path / "corrupt.jsonl.gz"
    path.write_bytes(bytes(data))
    _, _, dropped = run(tmp_path, path)
    assert dropped["reason"].to_list()[-1] == "truncated_file"


def test_file_names_that_are_not_utf8_are_readable_sources(tmp_path):
    (tmp_path / "in").mkdir()
    name = os.fsdecode(b"caf\xe9.jsonl")
    (tmp_path / "in" / name).write_text(f"{GOOD}\n")
    _, kept, _ = run(tmp_path, tmp_path / "in")
    assert kept["source"].to_list() == ["caf\ufffd.jsonl"]


def symlink_loop(directory):
    (directory / "a.jsonl").symlink_to("b.jsonl")
    (directory / "b.jsonl").symlink_to("a.jsonl")
    return directory / "a.jsonl"


def test_symlink_loop_is_named(tmp_path):
    loop = symlink_loop(tmp_path)
    with pytest.raises(InputPathError, match="symlink loop"):
        ingest_input(InputSpec(path=str(loop)), IngestConfig(), tmp_path / "out", stage="ingest")
    with pytest.raises(RecipeError, match=r"inputs\.0\.path: symlink loop"):
        parse_recipe({"inputs": [{"path": "a.jsonl", "license": "MIT"}], "output": {"dataset": "d"}},
                     base_dir=tmp_path)
    for path, problem in ((loop, "symlink loop (too many levels of symbolic links)"),
                          (tmp_path / "missing.jsonl", "no such file or directory")):
        proc = cli("ingest", str(path), "--out", str(tmp_path / "out"), check=False)
        message = " ".join(proc.stderr.split())  # one line, however the console wraps it
        assert proc.returncode == 2 and message == f"error: {path}: {problem}", proc.stderr


def test_symlink_loop_inside_an_input_directory_is_a_quarantined_file(tmp_path):
    (tmp_path / "in").mkdir()
    symlink_loop(tmp_path / "in")
    (tmp_path / "in" / "c.jsonl").write_text(f"{GOOD}\n")
    stats, kept, dropped = run(tmp_path, tmp_path / "in")
    assert stats.rows_out == 1
    assert dropped.select("source", "reason").rows() == [("a.jsonl", "unreadable_file"),
                                                       ("b.jsonl", "unreadable_file")]
    assert set(dropped["detail"]) == {"symlink loop (too many levels of symbolic links)"}
