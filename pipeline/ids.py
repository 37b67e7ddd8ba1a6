"""Stable content hashes: conversation, candidate and pair ids, file and shard checksums."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import xxhash


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def content_id(prefix: str, *parts: Any) -> str:
    """`prefix` + 128-bit xxh3 of the canonical JSON of `parts`."""
    return prefix + xxhash.xxh3_128_hexdigest(canonical_json(list(parts)).encode("utf-8"))


def conversation_id(prompt: list[dict], responses: list[dict]) -> str:
    return content_id("c", prompt, [(r["label"], r["content"]) for r in responses])


def pair_id(conversation: str, chosen: str, rejected: str) -> str:
    return content_id("p", conversation, chosen, rejected)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
