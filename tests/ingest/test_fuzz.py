"""Property-based tests: any bytes or any JSON value through ingest, any data through the recipe
loader: rows or quarantined rows with a reason, never an exception escaping the stage."""

from __future__ import annotations

import codecs
import gzip
import json
import tempfile
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.ingest import ingest_input
from pipeline.ingest.adapters import ADAPTERS, Malformed, adapt
from pipeline.recipe import FORMATS, IngestConfig, InputSpec, RecipeError, parse_recipe
from pipeline.shards import list_shards

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEWER = settings(SETTINGS, max_examples=40,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
# Text with lone surrogates too (json.dumps writes them as \\ud800 escapes); st.text() drops them.
texts = st.text(max_size=50) | st.lists(st.characters() | SURROGATES, max_size=10).map("".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=30,
)
# Objects shaped like the real formats, with fields of any type: they reach deep into the adapters.
KEYS = ["messages", "conversations", "chosen", "rejected", "prompt", "instruction", "input", "output",
        "instances", "response 1", "response 2", "label", "output_1", "output_2", "preference", "role",
        "content", "from", "value", "question"]
message = st.fixed_dictionaries({}, optional={"role": st.sampled_from(["user", "assistant", "system", "gpt", "x"]) | json_values,
                                             "content": st.text(max_size=30) | json_values,
                                             "from": st.sampled_from(["human", "gpt"]),
                                             "value": st.text(max_size=30)})
shaped = st.dictionaries(st.sampled_from(KEYS), json_values | st.lists(message, max_size=4)
                         | st.text(max_size=40).map(lambda t: f"\n\nHuman: {t}\n\nAssistant: {t[::-1]}"),
                         max_size=6)


# JSON written as text, so rows can hold what json.dumps never writes: integer literals past
# Python's 4300-digit limit, lone surrogate escapes, NaN, numbers past 64 bits, deep nesting.
def _array(items: list[str]) -> str:
    return "[" + ", ".join(items) + "]"


def _object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in pairs) + "}"


json_scalars = (json_values.map(json.dumps)
                | st.integers(4290, 4400).map(lambda n: "9" * n)
                | st.integers(1, 1500).map(lambda n: "[" * n + "]" * n)
                | st.sampled_from(['"\\ud800"', '"a\\udfffb"', '"\\udc00\\ud800"', '"\\ud83d\\ude00"',
                                   '{"\\udc80": 1}', '"user"', '"assistant"', '"gpt"', "NaN", "-Infinity",
                                   "1e999", "18446744073709551616", "-0"]))
json_text = st.recursive(
    json_scalars,
    lambda c: st.lists(c, max_size=4).map(_array)
    | st.lists(st.tuples(st.sampled_from(KEYS) | st.text(max_size=8), c), max_size=4).map(_object),
    max_leaves=12,
)
turn_text = st.lists(st.tuples(st.sampled_from(["role", "content", "from", "value"]), json_text),
                     max_size=3).map(_object)
row_text = json_text | st.lists(st.tuples(st.sampled_from(KEYS), json_text | st.lists(turn_text, max_size=3)
                                          .map(_array)), max_size=5).map(_object)
BOM = st.sampled_from([b"", codecs.BOM_UTF8])


def count_lines(data: bytes) -> int:
    """Lines as the JSONL reader splits them (on \\n; a last line may lack it)."""
    return data.count(b"\n") + (not data.endswith(b"\n") and bool(data))


def run_ingest(data: bytes, name: str, fmt: str = "auto", max_line_bytes: int = 4096):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        stats = ingest_input(InputSpec(path=str(path), format=fmt),
                             IngestConfig(max_text_chars=200, max_line_bytes=max_line_bytes), Path(d) / "out", stage="ingest")
        kept = sum(pl.read_parquet(p).height for p in list_shards(Path(d) / "out"))
        dropped = pl.concat([pl.read_parquet(p) for p in (Path(d) / "out").glob("dropped-*.parquet")]) \
            if stats.rows_dropped else pl.DataFrame({"reason": []})
        assert stats.rows_in == stats.rows_out + stats.rows_dropped
        assert kept == stats.rows_out and dropped.height == stats.rows_dropped
        assert dropped["reason"].null_count() == 0
        return stats


@SETTINGS
@given(st.binary(max_size=3000))
def test_any_bytes_as_jsonl(data):
    run_ingest(data, "in.jsonl")


@SETTINGS
@given(st.binary(max_size=2000))
def test_any_bytes_as_json_array(data):
    run_ingest(b"[" + data, "in.json")


@SETTINGS
@given(st.lists(json_values | shaped, max_size=8), st.sampled_from(FORMATS))
def test_any_json_values_in_any_format(values, fmt):
    data = "".join(json.dumps(v) + "\n" for v in values).encode()
    stats = run_ingest(data, "in.jsonl", fmt)
    assert stats.rows_in == len(values)


@FEWER
@given(st.lists(row_text, max_size=6), BOM, st.sampled_from(["\n", "\r\n"]), st.sampled_from(FORMATS))
def test_any_json_text_as_jsonl(rows, bom, newline, fmt):
    """Huge integers, lone surrogates, a BOM, deep nesting, wrong types: one row per line."""
    data = bom + "".join(r + newline for r in rows).encode()
    stats = run_ingest(data, "in.jsonl", fmt, max_line_bytes=1 << 17)
    assert stats.rows_in == count_lines(data)


@FEWER
@given(st.lists(row_text, max_size=6), BOM, st.sampled_from(["in.json", "in.jsonl", "in.json.gz"]))
def test_any_json_text_as_pretty_array(rows, bom, name):
    """A pretty-printed array (also saved as .jsonl) is read as an array: its items, and at most one
    file-level reason for a rest that does not parse."""
    data = bom + ("[\n" + ",\n".join(rows) + "\n]\n").encode()
    stats = run_ingest(gzip.compress(data) if name.endswith(".gz") else data, name, max_line_bytes=1 << 17)
    assert stats.rows_in == len(rows) if "bad_json" not in stats.reasons else stats.rows_in <= len(rows) + 1
    assert stats.reasons["bad_json"] <= 1


@FEWER
@given(st.lists(row_text, max_size=4), st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)),
                                             min_size=1, max_size=4),
       st.sampled_from(["in.jsonl.gz", "in.json.gz"]), st.booleans())
def test_corrupt_gzip(rows, flips, name, pretty):
    """Flipped bytes in a gzip stream (zlib errors, bad CRCs) quarantine the rest of the file."""
    text = ("[\n" + ",\n".join(rows) + "\n]\n") if pretty else "".join(r + "\n" for r in rows)
    data = bytearray(gzip.compress(text.encode()))
    for pos, mask in flips:
        data[pos % len(data)] ^= mask
    run_ingest(bytes(data), name, max_line_bytes=1 << 17)


@SETTINGS
@given(shaped, st.sampled_from(sorted(ADAPTERS)))
def test_adapters_raise_only_malformed(row, fmt):
    try:
        used, conv = adapt(row, fmt, 200)
    except Malformed as err:
        assert err.reason
        return
    assert conv["prompt"] and conv["prompt"][-1]["role"] == "user"
    assert all(isinstance(m["content"], str) and m["content"].strip() for m in conv["prompt"])
    json.dumps(conv, ensure_ascii=False).encode("utf-8")  # no lone surrogates: Parquet can store it


@SETTINGS
@given(json_values | st.dictionaries(st.sampled_from(["inputs", "ingest", "pairs", "output", "x"]), json_values))
def test_recipe_loader_raises_only_recipe_errors(data):
    try:
        parse_recipe(data, source="fuzz.yaml", base_dir=Path("/nonexistent"))
    except RecipeError as err:
        assert str(err).startswith("fuzz.yaml: ")
