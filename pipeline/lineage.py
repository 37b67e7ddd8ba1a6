"""What flows across the seam between stages, checked before anything is published.

Every stage declares the unit it reads and the unit it writes (`Stage.unit_in/unit_out`, recorded
in its stats). From those the funnel
says what each stage must have read: the output of the latest stage that wrote its unit, or the
rows that the latest stage reading its unit kept (the pairs stage reads the conversations that
generate kept, grouped from their candidates). On top of the per-stage counts, every ingested
conversation id must end up published, or dropped with a reason (a conversation that can give no
pair is dropped by the pairs stage with the reason why).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.stats import AccountingError

CONVERSATIONS, CANDIDATES, PAIRS = "conversations", "candidates", "pairs"

class LineageError(AccountingError):
    """Rows were lost or invented between stages; nothing is published."""


def expected_rows_in(before: list[dict], stage: dict) -> tuple[int, str] | None:
    """(rows `stage` must have read, the stage and count it follows from), from the funnel so far.

    Funnels recorded without units (older manifests) follow the previous stage's output."""
    unit = stage.get("unit_in")
    for prev in reversed(before):
        if unit is None or prev.get("unit_out") is None:
            return prev["outputs_written"], f"{prev['stage']} wrote {prev['outputs_written']}"
        if prev["unit_out"] == unit:
            return prev["outputs_written"], f"{prev['stage']} wrote {prev['outputs_written']} {unit}"
        if prev["unit_in"] == unit:
            return prev["rows_out"], f"{prev['stage']} kept {prev['rows_out']} {unit}"
    return None


def chain_problems(funnel: list[dict]) -> list[str]:
    """One message per stage that did not read what the stages before it emitted."""
    problems = []
    for i, stage in enumerate(funnel[1:], 1):
        expected = expected_rows_in(funnel[:i], stage)
        if expected is not None and expected[0] != stage["rows_in"]:
            unit = f" {stage['unit_in']}" if stage.get("unit_in") else " rows"
            problems.append(f"stage {stage['stage']} read {stage['rows_in']}{unit} but {expected[1]}")
    return problems


def _column(paths: Iterable[Path], *names: str) -> list:
    """Values of the first of `names` each file has (conversation tables call the id `id`)."""
    values: list = []
    for path in paths:
        schema = pq.read_schema(path)
        name = next(n for n in names if n in schema.names)
        values += pq.read_table(path, columns=[name]).column(0).to_pylist()
    return values


def conversation_ids(paths: Iterable[Path]) -> list:
    return _column(paths, "conversation_id", "id")


def unaccounted(ingested: list[Path], published: list[Path], dropped: list[Path]) -> set[str]:
    """Ingested conversation ids neither in the published pairs nor dropped with a reason."""
    return set(conversation_ids(ingested)) - set(conversation_ids(published)) - set(conversation_ids(dropped))


def where_lost(missing: set[str], stages: dict[str, list[Path]]) -> str:
    """The stage after which the missing ids vanish: the last stage whose output still had them."""
    last = next(iter(stages), "?")  # the first stage
    for stage, paths in stages.items():
        if missing & set(conversation_ids(paths)):
            last = stage
    return last


def check_build(funnel: list[dict], ingested: list[Path], published: list[Path], dropped: list[Path],
                stage_outputs: dict[str, list[Path]]) -> None:
    """Raise LineageError naming the stage (and ids) if a count or an id does not add up."""
    problems = chain_problems(funnel)
    for stage, paths in stage_outputs.items():
        repeated = sorted(str(p) for p, n in Counter(Path(p).resolve() for p in paths).items() if n > 1)
        if repeated:
            problems.append(f"stage {stage} lists output shard(s) twice: {', '.join(repeated[:3])}")
    if problems:
        raise LineageError("; ".join(problems))
    missing = unaccounted(ingested, published, dropped)
    if missing:
        stage = where_lost(missing, stage_outputs)
        shown = ", ".join(sorted(missing)[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise LineageError(f"{len(missing)} ingested conversation(s) vanished after stage {stage} "
                           f"(neither published nor dropped with a reason): {shown}")
