"""Pair construction: conversations (or scored candidates) -> chosen/rejected pairs in TRL's
conversational preference format.

Rules (`PairsConfig.rule`):
- `source`: the input's own chosen/rejected responses (`source_pairs`, no candidates needed).
- `best_vs_worst`: per prompt, the valid pair with the largest score margin.
- `best_vs_random_lower`: UltraFeedback binarisation: the best candidate against a random
  lower-scored one (seeded per conversation, so shard layout does not change the draw).
- `all_above_margin`: every valid pair whose margin is at least `tau`.
- `pairwise_winners`: one pair per decisive pairwise-judge verdict (COMPARISON rows).

A pair is valid only when chosen and rejected differ in score (by more than `tie_tolerance`) and
in text. Conversations that yield no pair are dropped with a reason (`all_tied`,
`single_candidate`, `identical_responses`, ...). Every candidate, with its score, rank and whether
it was excluded (failed annotation), is written beside the pairs as `candidates-*.parquet`.

Two margins: `score_margin` is the annotator's raw difference (score_chosen - score_rejected,
null without scores); `margin` is what TRL's RewardTrainer subtracts from the reward logit
difference (`-logsigmoid(r_chosen - r_rejected - margin)`): see `logit_margin`.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field

from pipeline.ids import pair_id
from pipeline.progress import report
from pipeline.config import Strict
from pipeline.shards import DEFAULT_SHARD_ROWS, DroppedWriter, ShardWriter, iter_rows
from pipeline.stats import StageStats
from pipeline.tables import PAIR, SCORED_CANDIDATE

RULES = ("source", "best_vs_worst", "best_vs_random_lower", "all_above_margin", "pairwise_winners")

# All candidates of the pair stage's input with their annotation: the `candidates` table.


class PairsConfig(Strict):
    rule: Literal[RULES] = Field(  # type: ignore[valid-type]
        "source", description="source | best_vs_worst | best_vs_random_lower | all_above_margin | "
                              "pairwise_winners")
    tau: float = Field(1.0, gt=0, description="all_above_margin: smallest score margin of a pair")
    tie_tolerance: float = Field(
        0.0, ge=0, description="scores that differ by at most this much are a tie (never a pair)")
    seed: int = Field(0, description="best_vs_random_lower: seed of the per-prompt draw")


# The win probability the prompt's clearest preference (normalised margin 1) stands for. The
# packaged density-ratio annotators pick the human-preferred response in 62-73 % of decisive pairs
# (benchmarks/README.md), so no pair asks a reward model for more than logit(0.6) = 0.41.
P_MAX = 0.6


def assistant(content: str) -> list[dict]:
    return [{"role": "assistant", "content": content}]


def logit_margin(normalized: float | None) -> float:
    """TRL's `margin` from the normalised margin d (score margin / the prompt's score spread):
    logit(0.5 + (P_MAX - 0.5) * clip(d, 0, 1)), in [0, 0.41]; 0.0 (no preference strength) when
    there is no d, as for source pairs."""
    p = 0.5 + (P_MAX - 0.5) * min(max(normalized or 0.0, 0.0), 1.0)
    return math.log(p / (1.0 - p))


def source_pairs(in_shard: Path, out_dir: Path, shard_rows: int = 1000, *, stage: str) -> StageStats:
    """One pair per conversation from the source's own `chosen`/`rejected` responses."""
    stats = StageStats(stage)
    out = ShardWriter(out_dir, PAIR, shard_rows=shard_rows)
    dropped = DroppedWriter(out_dir, stage, shard_rows=shard_rows)
    for conv in iter_rows(in_shard):
        by_label = {r["label"]: r for r in conv["responses"]}
        chosen, rejected = by_label.get("chosen"), by_label.get("rejected")
        reason = None
        if chosen is None or rejected is None:
            reason = "source_tie" if "tie" in by_label else "no_source_pair"
        elif chosen["content"].strip() == rejected["content"].strip():
            reason = "identical_responses"
        if reason:
            dropped.drop(reason, row=conv, source=conv["source"], source_row=conv["source_row"],
                         row_id=conv["id"], conversation_id=conv["id"])
            stats.drop(reason)
            continue
        out.write({
            "pair_id": pair_id(conv["id"], chosen["content"], rejected["content"]),
            "conversation_id": conv["id"],
            "prompt": conv["prompt"],
            "chosen": assistant(chosen["content"]),
            "rejected": assistant(rejected["content"]),
            "score_chosen": None, "score_rejected": None, "score_margin": None,
            "margin": logit_margin(None),
            "chosen_model": chosen["model"], "rejected_model": rejected["model"],
            "chosen_origin": "source", "rejected_origin": "source",
            "annotator": "source", "pair_rule": "source",
            "source": conv["source"], "source_row": conv["source_row"],
            "metadata": conv["metadata"],
        })
        stats.keep()
    report(stage, stats.rows_in)
    out.close()
    dropped.close()
    return stats.check()


# --- pairs from scored candidates -------------------------------------------------------------

def _same_text(a: dict, b: dict) -> bool:
    return a["response"].strip() == b["response"].strip()


def _valid(a: dict, b: dict, tol: float) -> bool:
    """`a` may be chosen over `b`: strictly higher score (beyond the tie tolerance), other text."""
    return a["score"] - b["score"] > tol and not _same_text(a, b)


def _dense_ranks(usable: list[dict], tol: float) -> dict[str, int]:
    ranks, rank, prev = {}, 0, None
    for c in sorted(usable, key=lambda c: -c["score"]):
        if prev is None or prev - c["score"] > tol:
            rank += 1
            prev = c["score"]
        ranks[c["candidate_id"]] = rank
    return ranks


def _by_conversation(rows: Iterator[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["conversation_id"]].append(row)
    return groups


def _copies(cands: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the candidates of one occurrence, the input file and row of each occurrence).

    Without dedup an input may repeat a conversation: its copies (told apart by their input row)
    give the same candidates, and each copy yields its pairs, as it would in separate shards."""
    occurrences = list(dict.fromkeys((c.get("source"), c.get("source_row")) for c in cands))
    first = occurrences[0]
    return ([c for c in cands if (c.get("source"), c.get("source_row")) == first],
            [{"source": src, "source_row": row} for src, row in occurrences])


def _load_annotations(path: Path | None) -> dict[str, dict]:
    out: dict[str, dict] = {}
    if path is None:
        return out
    for row in iter_rows(path):
        first = out.setdefault(row["candidate_id"], row)
        if (first["status"], first["score"]) != (row["status"], row["score"]):
            raise ValueError(f"{path}: candidate {row['candidate_id']} is annotated twice, differently")
    return out


def _scored(cand: dict, ann: dict | None) -> dict:
    """A candidate joined with its annotation; `excluded` says why it cannot be paired."""
    row = {k: cand.get(k) for k in ("candidate_id", "conversation_id", "source", "source_row", "prompt",
                                   "response", "model", "origin", "source_label")}
    for k in ("annotator", "status", "score", "score_argmax", "score_expectation", "aspects",
              "rationale"):
        row[k] = ann.get(k) if ann else None
    if ann is None:
        row["status"], row["excluded"] = "missing", "not_annotated"
    elif ann.get("status") != "ok" or ann.get("score") is None:
        row["excluded"] = "annotation_failed"
    else:
        row["excluded"] = None
    row.update(rank=None, times_chosen=0, times_rejected=0)
    return row


def _rule_pairs(usable: list[dict], config: PairsConfig, conversation_id: str
                ) -> list[tuple[dict, dict, float | None]]:
    """(chosen, rejected, p_win) for the score-based rules; candidates ordered best first."""
    tol = config.tie_tolerance
    order = sorted(usable, key=lambda c: (-c["score"], c["candidate_id"]))
    valid = [(a, b) for i, a in enumerate(order) for b in order[i + 1:] if _valid(a, b, tol)]
    if not valid:
        return []
    if config.rule == "best_vs_worst":
        best = max(valid, key=lambda ab: (ab[0]["score"] - ab[1]["score"]))
        return [(*best, None)]
    if config.rule == "best_vs_random_lower":
        chosen = valid[0][0]  # the best candidate that has a valid lower one
        lower = [b for a, b in valid if a is chosen]
        rng = random.Random(f"{config.seed}:{conversation_id}")
        return [(chosen, rng.choice(lower), None)]
    if config.rule == "all_above_margin":
        return [(a, b, None) for a, b in valid if a["score"] - b["score"] >= config.tau]
    raise ValueError(f"not a score rule: {config.rule}")


def _comparison_pairs(comparisons: list[dict], by_id: dict[str, dict]
                      ) -> tuple[list[tuple[dict, dict, float | None, str | None]], str | None]:
    """Pairs from decisive verdicts, or (no pairs, drop reason)."""
    pairs, verdicts = [], []
    for comp in comparisons:
        a, b = by_id.get(comp["candidate_a"]), by_id.get(comp["candidate_b"])
        if a is None or b is None:
            missing = comp["candidate_a"] if a is None else comp["candidate_b"]
            raise ValueError(f"comparison names candidate {missing} absent from the candidate shard")
        verdict = comp.get("verdict") if comp.get("status", "ok") == "ok" else None
        verdicts.append(verdict)
        if verdict not in ("a", "b") or _same_text(a, b):
            continue
        p_a = comp.get("p_a_wins")
        if verdict == "a":
            pairs.append((a, b, p_a, comp.get("annotator")))
        else:
            pairs.append((b, a, None if p_a is None else 1.0 - p_a, comp.get("annotator")))
    if pairs:
        return pairs, None
    if not verdicts:
        return [], "no_comparison"
    if all(v == "tie" for v in verdicts):
        return [], "all_tied"
    if all(v not in ("a", "b", "tie") for v in verdicts):
        return [], "comparison_failed"
    return [], "identical_responses"


def _drop_reason(usable: list[dict], total: int, tol: float, rule: str) -> str:
    if total == 1:
        return "single_candidate"
    if not usable:
        return "no_scored_candidates"
    if len(usable) == 1:
        return "single_candidate"
    scores = [c["score"] for c in usable]
    if max(scores) - min(scores) <= tol:
        return "all_tied"
    if len({c["response"].strip() for c in usable}) == 1:
        return "identical_responses"
    return "below_margin" if rule == "all_above_margin" else "no_valid_pair"


def _pair_row(conv_id: str, chosen: dict, rejected: dict, rule: str, p_win: float | None,
              annotator: str | None, spread: float | None, n_candidates: int) -> dict:
    if rule == "pairwise_winners":
        score_c = p_win
        score_r = None if p_win is None else 1.0 - p_win
    else:
        score_c, score_r = chosen["score"], rejected["score"]
    score_margin = None if score_c is None else score_c - score_r
    if rule == "pairwise_winners":
        normalized = score_margin
    else:
        normalized = score_margin / spread if spread else None
    metadata = {
        "chosen_candidate_id": chosen["candidate_id"],
        "rejected_candidate_id": rejected["candidate_id"],
        "margin_normalized": normalized,
        "num_candidates": n_candidates,
    }
    chosen["times_chosen"] += 1
    rejected["times_rejected"] += 1
    return {
        "pair_id": pair_id(conv_id, chosen["response"], rejected["response"]),
        "conversation_id": conv_id,
        "prompt": chosen["prompt"],
        "chosen": assistant(chosen["response"]),
        "rejected": assistant(rejected["response"]),
        "score_chosen": score_c, "score_rejected": score_r, "score_margin": score_margin,
        "margin": logit_margin(normalized),
        "chosen_model": chosen["model"], "rejected_model": rejected["model"],
        "chosen_origin": chosen["origin"], "rejected_origin": rejected["origin"],
        "annotator": annotator or chosen["annotator"], "pair_rule": rule,
        "source": chosen["source"], "source_row": chosen["source_row"],
        "metadata": json.dumps(metadata, sort_keys=True),
    }


def build_pairs(candidate_shard: Path, annotation_shard: Path | None, out_dir: Path,
                config: PairsConfig, comparison_shard: Path | None = None,
                shard_rows: int = DEFAULT_SHARD_ROWS, *, stage: str) -> StageStats:
    """Scored candidates of one shard -> `part-*.parquet` pairs, `candidates-*.parquet` (every
    candidate with its score) and `dropped-pairs-*.parquet` (conversations that gave no pair).

    rows_in counts conversations; outputs_written counts pairs. All candidates of a conversation
    must be in this shard (the generate stage writes them so).
    """
    if config.rule == "source":
        raise ValueError("rule 'source' pairs conversations, not candidates: use source_pairs")
    if config.rule == "pairwise_winners" and comparison_shard is None:
        raise ValueError("rule 'pairwise_winners' needs the comparison shard")
    stats = StageStats(stage)
    out = ShardWriter(out_dir, PAIR, shard_rows=shard_rows)
    table = ShardWriter(out_dir, SCORED_CANDIDATE, prefix="candidates", shard_rows=shard_rows)
    dropped = DroppedWriter(out_dir, stage, shard_rows=shard_rows)
    annotations = _load_annotations(annotation_shard)
    comparisons = (_by_conversation(iter_rows(comparison_shard))
                   if comparison_shard is not None else {})
    tol = config.tie_tolerance

    for conv_id, cands in _by_conversation(iter_rows(candidate_shard)).items():
        cands, copies = _copies(cands)
        scored = [_scored(c, annotations.get(c["candidate_id"])) for c in cands]
        usable = [c for c in scored if c["excluded"] is None]
        ranks = _dense_ranks(usable, tol)
        for c in usable:
            c["rank"] = ranks[c["candidate_id"]]
        spread = (max(c["score"] for c in usable) - min(c["score"] for c in usable)
                  if usable else None)

        if config.rule == "pairwise_winners":
            found, reason = _comparison_pairs(comparisons.get(conv_id, []),
                                              {c["candidate_id"]: c for c in scored})
            if len(scored) == 1:
                reason = "single_candidate"
        else:
            found = [(a, b, p, None) for a, b, p in _rule_pairs(usable, config, conv_id)]
            reason = None if found else _drop_reason(usable, len(scored), tol, config.rule)

        if found:
            rows = {}  # candidates with the same text give the same pair: keep the first
            for chosen, rejected, p_win, annotator in found:
                if pair_id(conv_id, chosen["response"], rejected["response"]) not in rows:
                    row = _pair_row(conv_id, chosen, rejected, config.rule, p_win, annotator,
                                    spread, len(scored))
                    rows[row["pair_id"]] = row
            for where in copies:
                for row in rows.values():
                    out.write({**row, **where})
            stats.keep(outputs=len(rows) * len(copies), rows=len(copies))
        else:
            excluded = sum(c["excluded"] is not None for c in scored)
            detail = (f"{len(scored)} candidates, {len(usable)} usable"
                      + (f", {excluded} excluded (failed or missing annotation)" if excluded else ""))
            first = cands[0]
            for where in copies:
                dropped.drop(reason, detail=detail, row_id=conv_id, conversation_id=conv_id, **where,
                             row={"conversation_id": conv_id, "prompt": first["prompt"],
                                  "candidates": [{k: c[k] for k in ("candidate_id", "score", "status")}
                                                 for c in scored]})
                stats.drop(reason)
        for c in scored:
            table.write({k: c[k] for k in SCORED_CANDIDATE.names})
    report(stage, stats.rows_in)
    out.close()
    table.close()
    dropped.close()
    return stats.check()
