"""Versioned Arrow schemas of every table prefpipe writes.

`SCHEMA_VERSION` changes whenever a column is added, removed or retyped; it is recorded in every
manifest. `python -m pipeline.recipe` re-exports the table schemas and the recipe's to `schemas/` (a test checks they match).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

SCHEMA_VERSION = "1.2"  # 1.1: source/source_row on candidates, conversation_id on dropped rows;
# 1.2: pairs: score_margin (the raw difference), margin on TRL's logit scale and never null

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)

# A response that came with the source row (hh-rlhf chosen/rejected, Alpaca output, a reference).
SOURCE_RESPONSE = pa.struct(
    [
        ("label", pa.string()),  # chosen | rejected | reference | response_1 | response_2 ...
        ("content", pa.string()),
        ("model", pa.string()),  # generator named by the source, when it names one
    ]
)

CONVERSATION = pa.schema(
    [
        ("id", pa.string()),  # stable content hash of prompt + source responses
        ("source", pa.string()),  # input file name
        ("source_row", pa.int64()),  # row index within that input
        ("format", pa.string()),  # adapter that parsed it
        ("messages", MESSAGES),  # the whole conversation as given
        ("prompt", MESSAGES),  # messages up to and including the last user turn
        ("responses", pa.list_(SOURCE_RESPONSE)),
        ("metadata", pa.string()),  # JSON object of the source row's other fields
    ]
)

CANDIDATE = pa.schema(
    [
        ("candidate_id", pa.string()),
        ("conversation_id", pa.string()),
        ("source", pa.string()),  # input file and row of the conversation it answers
        ("source_row", pa.int64()),
        ("prompt", MESSAGES),
        ("response", pa.string()),
        ("model", pa.string()),
        ("origin", pa.string()),  # on_policy (generated) | off_policy (from the source)
        ("source_label", pa.string()),  # chosen/rejected/... for off-policy candidates
        ("sample_index", pa.int32()),
        ("params", pa.string()),  # JSON of the sampling parameters
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("finish_reason", pa.string()),  # stop | length | source
        ("flags", pa.list_(pa.string())),  # empty | truncated
        ("latency_s", pa.float64()),
    ]
)

ANNOTATION = pa.schema(
    [
        ("candidate_id", pa.string()),
        ("conversation_id", pa.string()),
        ("annotator", pa.string()),  # e.g. judge:qwen2.5-coder-0.5b, cdr:strong/weak, rm:name
        ("status", pa.string()),  # ok | failed
        ("score", pa.float64()),  # the score pairs are built from (null when failed)
        ("score_argmax", pa.float64()),  # judge: the rating token chosen
        ("score_expectation", pa.float64()),  # judge: sum s * p(s) over rating tokens
        ("aspects", pa.string()),  # JSON {aspect: rating}
        ("rationale", pa.string()),
        ("raw", pa.string()),  # raw judge output, kept for failed parses
        ("method", pa.string()),  # judge_pointwise | judge_pairwise | density_ratio | reward_model | ensemble
        ("error", pa.string()),  # why the annotation failed (null when ok)
        ("details", pa.string()),  # JSON: seeds, CDR log-probs and token counts, pairwise wins ...
    ]
)

# Pairwise judge verdicts, one row per compared candidate pair, both orders.
COMPARISON = pa.schema(
    [
        ("conversation_id", pa.string()),
        ("candidate_a", pa.string()),
        ("candidate_b", pa.string()),
        ("annotator", pa.string()),
        ("status", pa.string()),  # ok | failed
        ("verdict_ab", pa.string()),  # winner (a | b | tie) with a shown first
        ("verdict_ba", pa.string()),  # winner (a | b | tie) with b shown first
        ("verdict", pa.string()),  # final: a | b | tie (orders disagree -> tie)
        ("p_a_wins", pa.float64()),  # P(a wins) from verdict-token log-probs, mean over orders
        ("p_a_ab", pa.float64()),
        ("p_a_ba", pa.float64()),
        ("raw_ab", pa.string()),
        ("raw_ba", pa.string()),
        ("error", pa.string()),
        ("seeds", pa.list_(pa.int64())),
    ]
)

# Every candidate of a published version with its score and how the pair rule used it.
SCORED_CANDIDATE = pa.schema(
    [
        ("candidate_id", pa.string()),
        ("conversation_id", pa.string()),
        ("source", pa.string()),
        ("source_row", pa.int64()),
        ("prompt", MESSAGES),
        ("response", pa.string()),
        ("model", pa.string()),
        ("origin", pa.string()),
        ("source_label", pa.string()),
        ("annotator", pa.string()),
        ("status", pa.string()),  # ok | failed | missing (no annotation row)
        ("score", pa.float64()),
        ("score_argmax", pa.float64()),
        ("score_expectation", pa.float64()),
        ("aspects", pa.string()),
        ("rationale", pa.string()),
        ("rank", pa.int32()),  # dense rank among the prompt's usable candidates (1 = best)
        ("excluded", pa.string()),  # null, or why it could not take part: annotation_failed ...
        ("times_chosen", pa.int32()),
        ("times_rejected", pa.int32()),
    ]
)


PAIR = pa.schema(
    [
        ("pair_id", pa.string()),
        ("conversation_id", pa.string()),
        ("prompt", MESSAGES),  # TRL conversational preference format
        ("chosen", MESSAGES),
        ("rejected", MESSAGES),
        ("score_chosen", pa.float64()),
        ("score_rejected", pa.float64()),
        ("score_margin", pa.float64()),  # score_chosen - score_rejected (null: no scores, source pairs)
        # TRL RewardTrainer's margin, subtracted from the reward logit difference; never null:
        # logit(0.5 + 0.1 * clip(metadata.margin_normalized, 0, 1)) in [0, 0.41], 0.0 without scores
        ("margin", pa.float64()),
        ("chosen_model", pa.string()),
        ("rejected_model", pa.string()),
        ("chosen_origin", pa.string()),
        ("rejected_origin", pa.string()),
        ("annotator", pa.string()),
        ("pair_rule", pa.string()),
        ("source", pa.string()),
        ("source_row", pa.int64()),
        ("metadata", pa.string()),  # JSON: filter scores (ches, ...) and other provenance
    ]
)

DROPPED = pa.schema(
    [
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("source", pa.string()),
        ("source_row", pa.int64()),
        ("conversation_id", pa.string()),  # the ingested conversation it descends from (null: never parsed)
        ("row_id", pa.string()),  # id of the dropped row when it had one
        ("match_id", pa.string()),  # the row / benchmark item it matched (dedup, decontam)
        ("row", pa.string()),  # the original row as JSON (or decoded text)
        ("raw", pa.binary()),  # original bytes when they could not be decoded
    ]
)

TABLES: dict[str, pa.Schema] = {
    "conversation": CONVERSATION,
    "candidate": CANDIDATE,
    "annotation": ANNOTATION,
    "comparison": COMPARISON,
    "scored_candidate": SCORED_CANDIDATE,
    "pair": PAIR,
    "dropped": DROPPED,
}


def schema_to_json(schema: pa.Schema) -> dict:
    """A readable, diffable description of an Arrow schema."""
    return {
        "schema_version": SCHEMA_VERSION,
        "fields": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema],
    }


def export(directory: Path) -> list[Path]:
    """Write one JSON file per table into `directory` (the repo's `schemas/`)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in TABLES.items():
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(schema_to_json(schema), indent=2) + "\n")
        written.append(path)
    return written

