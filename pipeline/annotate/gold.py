"""Gold preference pairs for annotator evaluation: (prompt, response A, response B, label a|b|tie).

Read with the ingest readers and adapters, so the formats of `shared/data/real/preference` work
unchanged: Auto-J pairwise (`label` 0/1/2), AlpacaEval annotations (`preference` 1/2/0) and
hh-rlhf / `prompt,chosen,rejected` pairs. Labelled files keep their own A/B order; chosen/rejected
files have none, so the order is drawn from a seeded coin per pair (a judge biased to the first
position must not score by construction). Unusable rows are returned with a reason, never lost.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from pipeline.ingest.adapters import Malformed, adapt
from pipeline.ingest.readers import read_rows


@dataclass(frozen=True)
class GoldPair:
    source_row: int
    prompt: list[dict]
    response_a: str
    response_b: str
    label: str  # a | b | tie


def _pair(conv: dict, fmt: str, coin: random.Random) -> GoldPair | str:
    by_label = {r["label"]: r["content"] for r in conv["responses"]}
    if fmt == "pairwise_labelled":
        a = conv["messages"][-1]["content"]  # the file's response A / output_1
        if "tie" in by_label:
            others = [r["content"] for r in conv["responses"]]
            b, label = (others[1] if others[0] == a else others[0]), "tie"
        else:
            chosen, rejected = by_label["chosen"], by_label["rejected"]
            b, label = (rejected, "a") if chosen == a else (chosen, "b")
    elif "chosen" in by_label and "rejected" in by_label:
        chosen, rejected = by_label["chosen"], by_label["rejected"]
        a, b, label = (chosen, rejected, "a") if coin.random() < 0.5 else (rejected, chosen, "b")
    else:
        return "no_gold_label"
    if a.strip() == b.strip():
        return "identical_responses"
    return GoldPair(-1, conv["prompt"], a, b, label)


def load_gold(path: Path, fmt: str = "auto", limit: int | None = None, seed: int = 0,
              max_chars: int = 100_000) -> tuple[list[GoldPair], list[tuple[int, str]]]:
    """(gold pairs, [(source row, reason)] for rows that could not be used).

    `limit` takes a fixed random sample of that many usable pairs (seeded), in file order.
    """
    coin = random.Random(seed)
    pairs: list[GoldPair] = []
    rejected: list[tuple[int, str]] = []
    for raw in read_rows(Path(path)):
        if raw.error:
            rejected.append((raw.index, raw.error))
            continue
        try:
            used, conv = adapt(raw.value, fmt, max_chars)
        except Malformed as err:
            rejected.append((raw.index, err.reason))
            continue
        got = _pair(conv, used, coin)
        if isinstance(got, str):
            rejected.append((raw.index, got))
        else:
            pairs.append(GoldPair(raw.index, got.prompt, got.response_a, got.response_b, got.label))
    if limit is not None and limit < len(pairs):
        keep = sorted(random.Random(seed).sample(range(len(pairs)), limit))
        pairs = [pairs[i] for i in keep]
    return pairs, rejected
