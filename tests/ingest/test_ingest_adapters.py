"""Every format adapter on real third-party rows (../shared/data/real)."""

from __future__ import annotations

import gzip
import json

import polars as pl
import pytest

from pipeline.ingest import ingest_input
from pipeline.ingest.adapters import Malformed, adapt, detect_format
from pipeline.recipe import IngestConfig, InputSpec
from pipeline.shards import list_shards


def first_rows(path, n=50):
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        head = f.read(1)
        f.seek(0)
        if head == "[":
            return json.load(f)[:n]
        return [json.loads(line) for _, line in zip(range(n), f)]


def ingest(tmp_path, path, fmt="auto", **cfg):
    out = tmp_path / "out"
    stats = ingest_input(InputSpec(path=str(path), format=fmt), IngestConfig(**cfg), out, stage="ingest")
    kept = pl.read_parquet(list_shards(out)) if list_shards(out) else pl.DataFrame()
    dropped = pl.read_parquet(sorted(out.glob("dropped-*.parquet"))) if stats.rows_dropped else pl.DataFrame()
    assert stats.rows_in == stats.rows_out + stats.rows_dropped == len(kept) + len(dropped)
    return stats, kept, dropped


def test_hh_rlhf_transcripts_become_prompt_plus_two_responses(real_data, tmp_path):
    path = real_data / "preference/hh-rlhf_harmless-base_test.jsonl.gz"
    row = first_rows(path, 1)[0]
    fmt, conv = adapt(row, "auto", 100_000)
    assert fmt == "hh_rlhf"
    assert conv["prompt"][0]["role"] == "user"
    assert conv["prompt"][-1]["role"] == "user"
    # The prompt is the shared prefix; the replies are the text after the last "Assistant:".
    chosen_tail = row["chosen"].rsplit("\n\nAssistant:", 1)[1].strip()
    rejected_tail = row["rejected"].rsplit("\n\nAssistant:", 1)[1].strip()
    labels = {r["label"]: r["content"] for r in conv["responses"]}
    assert labels == {"chosen": chosen_tail, "rejected": rejected_tail}
    assert conv["prompt"][0]["content"] in row["chosen"]

    stats, kept, dropped = ingest(tmp_path, path)
    assert stats.rows_in == 2312
    assert set(kept["format"]) == {"hh_rlhf"}
    # Real malformed transcripts (empty final replies, prompts that differ) are quarantined with reasons.
    assert stats.rows_dropped == len(dropped) > 0
    assert set(dropped["reason"]) <= {"empty_content", "bad_role_order", "prompt_mismatch"}
    assert dropped["row"].null_count() == 0


def test_autoj_pairwise_labels_map_to_chosen_rejected_or_tie(real_data):
    rows = first_rows(real_data / "preference/autoj_testdata_pairwise.jsonl.gz", 200)
    seen = set()
    for row in rows:
        try:
            fmt, conv = adapt(row, "auto", 100_000)
        except Malformed:
            continue
        assert fmt == "pairwise_labelled"
        labels = [r["label"] for r in conv["responses"]]
        if row["label"] == 2:
            assert labels == ["tie", "tie"]
        else:
            winner = row["response 1"] if row["label"] == 0 else row["response 2"]
            assert labels == ["chosen", "rejected"]
            assert conv["responses"][0]["content"] == winner
        seen.add(row["label"])
        assert conv["prompt"] == [{"role": "user", "content": row["prompt"]}]
    assert seen == {0, 1, 2}


def test_alpaca_eval_outputs_json_array_streams_as_alpaca(real_data, tmp_path):
    path = real_data / "prompts/alpaca_eval_text-davinci-003_outputs.json"
    stats, kept, _ = ingest(tmp_path, path)
    assert stats.rows_in == stats.rows_out == 805
    assert set(kept["format"]) == {"alpaca"}
    first = first_rows(path, 1)[0]
    row = kept.row(0, named=True)
    assert row["prompt"] == [{"role": "user", "content": first["instruction"]}]
    assert row["responses"][0]["content"] == first["output"]
    assert row["responses"][0]["model"] == first["generator"]


def test_alpaca_eval_gpt4_annotations_are_labelled_pairs(real_data, tmp_path):
    path = real_data / "preference/alpaca_eval_alpaca-7b_vs_text-davinci-003_gpt4-judge_annotations.json.gz"
    stats, kept, dropped = ingest(tmp_path, path)
    assert stats.rows_in == 805
    ties = sum(1 for r in kept["responses"] if r[0]["label"] == "tie")
    raw = first_rows(path, 1000)
    assert ties == sum(1 for r in raw if r["preference"] == 0)


def test_arena_hard_messages_with_wrapped_answers(real_data):
    rows = first_rows(real_data / "prompts/arena-hard-v0.1_answers_gpt-4-0314.jsonl.gz", 20)
    for row in rows:
        fmt, conv = adapt(row, "auto", 100_000)
        assert fmt == "openai"
        assert conv["prompt"][-1]["role"] == "user"
        assert conv["responses"][0]["content"] == row["messages"][-1]["content"]["answer"]
        assert conv["responses"][0]["model"] == "gpt-4-0314"


def test_self_instruct_instances(real_data):
    rows = first_rows(real_data / "prompts/self-instruct_user_oriented_instructions.jsonl", 30)
    for row in rows:
        fmt, conv = adapt(row, "auto", 100_000)
        assert fmt == "alpaca"
        assert conv["prompt"][0]["content"].startswith(row["instruction"])
        inst = row["instances"][0]
        if inst["input"].strip():
            assert inst["input"] in conv["prompt"][0]["content"]


def test_sharegpt_pairs_and_plain_prompt_formats(real_data):
    autoj = first_rows(real_data / "preference/autoj_testdata_pairwise.jsonl.gz", 5)
    # ShareGPT: the same real dialogue expressed with from/value.
    hh = first_rows(real_data / "preference/hh-rlhf_harmless-base_test.jsonl.gz", 1)[0]
    _, conv = adapt(hh, "hh_rlhf", 100_000)
    sharegpt = {"conversations": [{"from": {"user": "human", "assistant": "gpt"}[m["role"]],
                                   "value": m["content"]} for m in conv["messages"]]}
    fmt, sg = adapt(sharegpt, "auto", 100_000)
    assert fmt == "sharegpt"
    assert sg["prompt"] == conv["prompt"]
    assert sg["responses"][0]["content"] == conv["responses"][0]["content"]

    pairs = {"prompt": autoj[0]["prompt"], "chosen": autoj[0]["response 1"], "rejected": autoj[0]["response 2"]}
    fmt, p = adapt(pairs, "auto", 100_000)
    assert fmt == "pairs"
    assert [r["label"] for r in p["responses"]] == ["chosen", "rejected"]

    fmt, pr = adapt({"prompt": autoj[1]["prompt"]}, "auto", 100_000)
    assert fmt == "prompt" and pr["responses"] == []


def test_ids_are_stable_content_hashes(real_data):
    row = first_rows(real_data / "preference/hh-rlhf_harmless-base_test.jsonl.gz", 1)[0]
    a = adapt(row, "auto", 100_000)[1]["id"]
    b = adapt(dict(row, extra="metadata does not change the id"), "auto", 100_000)[1]["id"]
    c = adapt(dict(row, chosen=row["chosen"] + " more"), "auto", 100_000)[1]["id"]
    assert a == b != c


def test_forced_format_mismatch_is_quarantined(real_data, tmp_path):
    path = real_data / "prompts/self-instruct_user_oriented_instructions.jsonl"
    stats, kept, dropped = ingest(tmp_path, path, fmt="hh_rlhf")
    assert stats.rows_out == 0 and stats.rows_dropped == 252
    assert set(dropped["reason"]) == {"missing_field"}


def test_unknown_format_is_a_reason_not_a_crash():
    with pytest.raises(Malformed) as err:
        detect_format({"foo": 1})
    assert err.value.reason == "unknown_format"


WRONG_TYPES = [  # (row, reason, detail): every adapter names the field of the wrong type
    ({"messages": "a string"}, "wrong_type", "messages is string, expected an array of messages"),
    ({"messages": ["hi"]}, "wrong_type", "messages[0] is string, expected an object"),
    ({"messages": [{"role": 1, "content": "x"}]}, "wrong_type", "messages[0].role is integer, expected a string"),
    ({"messages": [{"role": "user", "content": 5}]}, "non_string_content", "messages[0].content is integer"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "model": 7},
     "wrong_type", "model is integer, expected a string"),
    ({"conversations": {"from": "human"}}, "wrong_type", "conversations is object, expected an array of messages"),
    ({"conversations": [{"from": ["human"], "value": "x"}]}, "wrong_type",
     "conversations[0].from is array, expected a string"),
    ({"conversations": [{"from": "human", "value": None}]}, "missing_field", "conversations[0].value"),
    ({"chosen": 42, "rejected": "\n\nHuman: hi\n\nAssistant: yo"}, "non_string_content", "chosen is integer"),
    ({"instruction": "i", "input": 3, "output": "o"}, "non_string_content", "input is integer"),
    ({"instruction": "i", "output": True}, "non_string_content", "output is boolean"),
    ({"instruction": "i", "output": "o", "generator": {"name": "m"}}, "wrong_type",
     "generator is object, expected a string"),
    ({"instruction": "i", "instances": [{"input": "a", "output": 5}]}, "non_string_content",
     "instances[0].output is integer"),
    ({"instruction": "i", "instances": "x"}, "wrong_type", "instances must be a non-empty array of objects"),
    ({"prompt": 5}, "wrong_type", "prompt is integer, expected an array of messages"),
    ({"question": {"text": "q"}}, "wrong_type", "question is object, expected an array of messages"),
    ({"prompt": "p", "chosen": 1.5, "rejected": "r"}, "non_string_content", "chosen is number"),
    ({"prompt": "p", "chosen": "c", "rejected": ["r"]}, "wrong_type", "rejected[0] is string, expected an object"),
    ({"prompt": "p", "chosen": "c", "rejected": "r", "chosen_model": []}, "wrong_type",
     "chosen_model is array, expected a string"),
    ({"prompt": "p", "response 1": 3, "response 2": "b", "label": 0}, "non_string_content", "response 1 is integer"),
    ({"prompt": "p", "response 1": "a", "response 2": "b", "label": "0"}, "bad_label", "label='0'"),
]


def test_wrong_types_are_quarantined_naming_the_field(tmp_path):
    path = tmp_path / "wrong.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row, _, _ in WRONG_TYPES))
    stats, _, dropped = ingest(tmp_path, path)
    assert stats.rows_out == 0
    got = dropped.sort("source_row").select("reason", "detail").rows()
    assert got == [(reason, detail) for _, reason, detail in WRONG_TYPES]


def test_a_prompt_may_still_be_a_string(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "a string"}) + "\n"
                    + json.dumps({"prompt": "p", "chosen": "c", "rejected": "r", "chosen_model": None}) + "\n")
    stats, kept, _ = ingest(tmp_path, path)
    assert stats.rows_out == 2 and kept["prompt"].to_list()[0] == [{"role": "user", "content": "a string"}]
