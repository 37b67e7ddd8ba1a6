"""Recipe building blocks shared by every stage's configuration model.

Stage modules define their config as `Strict` subclasses here-importable without the recipe
(`pipeline.recipe` composes them), so there is no import cycle between the recipe and its stages.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FORMATS = ("auto", "openai", "sharegpt", "hh_rlhf", "alpaca", "prompt", "pairs", "pairwise_labelled")


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the file and the field."""


class Strict(BaseModel):
    """Unknown keys are errors; configs are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(Strict):
    path: str = Field(description="File or directory (JSONL[.gz], JSON array, Parquet, HF save_to_disk)")
    format: Literal[FORMATS] = "auto"  # type: ignore[valid-type]
    license: str | None = Field(None, description="Licence of the input, shown on the data card")
    max_rows: int | None = Field(None, ge=1, description="Read at most this many rows")


class IngestConfig(Strict):
    shard_rows: int = Field(1000, ge=1, le=1_000_000)
    max_text_chars: int = Field(100_000, ge=1, description="Longer messages are quarantined")
    max_line_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Longer raw lines are quarantined")


def format_error(source: str, err: ValidationError) -> str:
    """One line per validation error: `FILE: dotted.field: message`."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{source}: {loc}: {msg}")
    return "\n".join(lines)
