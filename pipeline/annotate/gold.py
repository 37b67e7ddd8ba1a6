"""Gold preference pairs for annotator evaluation: (prompt, response A, response B, label a|b|tie).

Read with the ingest readers and adapters, so the formats of `shared/data/real/preference` work
unchanged: Auto-J pairwise (`label` 0/1/2), AlpacaEval annotations (`preference` 1/2/0) and
hh-rlhf / `prompt,chosen,rejected` pairs. Labelled files keep their own A/B order; chosen/rejected
files have none, so the order is drawn from a seeded coin per pair (a judge biased to the first
position must not score by construction). Unusable rows are returned with a reason, never lost.
Each pair keeps the file's category (Auto-J `scenario`, AlpacaEval `dataset`) for per-group
reports; Auto-J's 58 scenarios are grouped as its paper groups them (8 groups).
"""

from __future__ import annotations

import json
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
    category: str | None = None  # the file's own category field (CATEGORY_FIELDS), if any

    @property
    def group(self) -> str | None:
        """The category's group (Auto-J scenario -> scenario group), else the category itself."""
        return AUTOJ_GROUP.get(self.category, self.category)


# row fields naming a pair's category, first found wins: Auto-J, AlpacaEval, others
CATEGORY_FIELDS = ("scenario", "dataset", "category", "source")
# Auto-J's scenario groups (Li et al. 2023, "Generative Judge for Evaluating Alignment")
AUTOJ_SCENARIO_GROUPS = {
    "Summarization": "post_summarization text_summarization note_summarization",
    "Exam Questions": "math_reasoning solving_exam_question_with_math solving_exam_question_without_math",
    "Code": "code_simplification code_generation explaining_code code_correction_rewriting "
            "code_to_code_translation",
    "Rewriting": "text_simplification language_polishing instructional_rewriting text_correction paraphrasing",
    "Creative Writing": "writing_song_lyrics writing_social_media_post writing_blog_post "
                        "writing_personal_essay creative_writing writing_advertisement "
                        "writing_marketing_materials writing_presentation_script counterfactual",
    "Functional Writing": "writing_product_description writing_job_application writing_news_article "
                          "writing_biography writing_email writing_legal_document "
                          "writing_technical_document writing_scientific_paper functional_writing "
                          "writing_cooking_recipe",
    "General Communication": "asking_how_to_question open_question analyzing_general explaining_general "
                             "seeking_advice recommendation value_judgement verifying_fact chitchat "
                             "roleplay planning brainstorming",
    "NLP Tasks": "ranking text_to_text_translation data_analysis classification_identification "
                 "title_generation question_generation reading_comprehension keywords_extraction "
                 "information_extraction topic_modeling others",
}
AUTOJ_GROUP = {scenario: group for group, names in AUTOJ_SCENARIO_GROUPS.items() for scenario in names.split()}


def _category(conv: dict) -> str | None:
    meta = json.loads(conv.get("metadata") or "{}")
    return next((meta[f] for f in CATEGORY_FIELDS if isinstance(meta.get(f), str) and meta[f]), None)


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
    return GoldPair(-1, conv["prompt"], a, b, label, _category(conv))


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
            pairs.append(GoldPair(raw.index, got.prompt, got.response_a, got.response_b, got.label,
                                  got.category))
    if limit is not None and limit < len(pairs):
        keep = sorted(random.Random(seed).sample(range(len(pairs)), limit))
        pairs = [pairs[i] for i in keep]
    return pairs, rejected
