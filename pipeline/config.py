"""Recipe building blocks shared by every stage's configuration model.

Stage modules define their config as `Strict` subclasses here-importable without the recipe
(`pipeline.recipe` composes them), so there is no import cycle between the recipe and its stages.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections import Counter
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FORMATS = ("auto", "openai", "sharegpt", "hh_rlhf", "alpaca", "prompt", "pairs", "pairwise_labelled")


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the file and the field."""


class Strict(BaseModel):
    """Unknown keys and lax coercions (`true` or `'10'` for an int) are errors; configs are
    immutable once validated. YAML's own types still fit: an int where a float is expected."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class InputSpec(Strict):
    path: str = Field(description="File or directory (JSONL[.gz], JSON array, Parquet, HF save_to_disk)")
    format: Literal[FORMATS] = "auto"  # type: ignore[valid-type]
    license: str | None = Field(None, description="Licence of the input, shown on the data card")
    max_rows: int | None = Field(None, ge=1, description="Read at most this many rows")


class IngestConfig(Strict):
    shard_rows: int = Field(1000, ge=1, le=1_000_000)
    max_text_chars: int = Field(100_000, ge=1, description="Longer messages are quarantined")
    max_line_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Longer raw lines are quarantined")


def _schema_nodes(node: dict, defs: dict) -> list[dict]:
    """The object schemas `node` may be ($ref resolved, unions spread)."""
    while "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[-1]]
    alternatives = node.get("anyOf") or node.get("oneOf")
    return [n for alt in alternatives for n in _schema_nodes(alt, defs)] if alternatives else [node]


def known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys `model` accepts in the mapping at `loc` (parts that name no field, such as a union
    member's tag, are passed over)."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    nodes = [schema]
    for part in loc:
        step = []
        for node in (n for x in nodes for n in _schema_nodes(x, defs)):
            if isinstance(part, int) and "items" in node:
                step.append(node["items"])
            elif isinstance(part, str) and part in node.get("properties", {}):
                step.append(node["properties"][part])
            elif isinstance(part, str) and isinstance(node.get("additionalProperties"), dict):
                step.append(node["additionalProperties"])
        nodes = step or nodes
    return sorted({k for x in nodes for n in _schema_nodes(x, defs) for k in n.get("properties", {})})


def _unknown_key(model: type[BaseModel] | None, loc: tuple) -> str:
    if model is None or not loc or not isinstance(loc[-1], str):
        return "unknown key"
    keys = known_keys(model, loc[:-1])
    close = difflib.get_close_matches(loc[-1], keys, n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean {close[0]}?)"
    return f"unknown key (known here: {', '.join(keys)})" if keys else "unknown key"


FIELD_FIRST = re.compile(r"([a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*): ")

def format_error(source: str, err: ValidationError, section: str = "",
                 model: type[BaseModel] | None = None) -> str:
    """One line per validation error: `FILE: dotted.field: message` (fields of `section` when
    only that section of the recipe was validated). With `model`, an unknown key names the key
    it is closest to, or the keys allowed there."""
    lines = []
    for e in err.errors():
        parts = [str(p) for p in (section, *e["loc"]) if p != ""]
        msg = _unknown_key(model, e["loc"]) if e["type"] == "extra_forbidden" else e["msg"]
        if e["type"] == "value_error":  # a cross-field check: its message may start with the field
            msg = msg.removeprefix("Value error, ")
            if (named := FIELD_FIRST.match(msg)) is not None:
                field = named[1].split(".")
                parts, msg = [*parts, *field[bool(parts) and parts[-1] == field[0]:]], msg[named.end():]
        lines.append(f"{source}: {'.'.join(parts) or '(top level)'}: {msg}")
    return "\n".join(lines)


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
KEY_PREFIXES = ("sk-", "sk_", "pk_", "rk_", "hf_", "ghp_", "gho_", "ghs_", "ghu_", "github_pat_",
                "glpat-", "xox", "AKIA", "AIza")


def looks_like_key(value: str) -> bool:
    """Whether a value given as an environment variable's NAME is more likely the secret itself:
    a known key prefix, a character no variable name has, or a long high-entropy run (variable
    names are short words joined by `_`)."""
    if value.startswith(KEY_PREFIXES) or not ENV_NAME.match(value):
        return True
    run = max(value.split("_"), key=len)
    mixed = sum(any(f(c) for c in run) for f in (str.islower, str.isupper, str.isdigit)) >= 2
    entropy = -sum(n / len(run) * math.log2(n / len(run)) for n in Counter(run).values()) if run else 0
    return len(run) >= 16 and mixed and entropy >= 3.5


def env_var_problem(value: object, require_set: bool = True) -> str | None:
    """Why `value` cannot name the environment variable holding an API key, or None. The message
    never repeats a value that looks like a key, nor any variable's value."""
    if not isinstance(value, str):
        return "expected the name of an environment variable"
    if looks_like_key(value):
        return ("looks like a key, not a variable name: put the key in an environment variable "
                "and give the variable's name here")
    if require_set and not os.environ.get(value):
        return f"environment variable {value} is not set (it must hold the API key)"
    return None
