"""Property-based tests: any bytes or any JSON value through ingest, any data through the recipe
loader: rows or quarantined rows with a reason, never an exception escaping the stage."""

from __future__ import annotations

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

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
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


def run_ingest(data: bytes, name: str, fmt: str = "auto"):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        stats = ingest_input(InputSpec(path=str(path), format=fmt),
                             IngestConfig(max_text_chars=200, max_line_bytes=4096), Path(d) / "out")
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


@SETTINGS
@given(json_values | st.dictionaries(st.sampled_from(["inputs", "ingest", "pairs", "output", "x"]), json_values))
def test_recipe_loader_raises_only_recipe_errors(data):
    try:
        parse_recipe(data, source="fuzz.yaml", base_dir=Path("/nonexistent"))
    except RecipeError as err:
        assert str(err).startswith("fuzz.yaml: ")
