"""Validation of user-supplied dataset names and version references."""

from __future__ import annotations

import re

# Anchored with \Z (`$` would let a trailing newline through).
NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
VERSION_RE = re.compile(r"\Av?([0-9]{1,9})\Z")


class NameError_(ValueError):
    pass


def check_dataset_name(name: str) -> str:
    """Reject names that could escape the data root: separators, `..`, absolute paths, NUL."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise NameError_(
            f"invalid dataset name {name!r}: use letters, digits, '.', '_' and '-' "
            "(no path separators, no '..', at most 100 characters)"
        )
    return name


def parse_version(text: str) -> int:
    m = VERSION_RE.match(text or "")
    if not m:
        raise NameError_(f"invalid version {text!r}: expected vN, e.g. v3 or v0003")
    return int(m.group(1))


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`NAME` or `NAME@vN` -> (name, version or None for the latest)."""
    name, _, version = ref.partition("@")
    return check_dataset_name(name), (parse_version(version) if version else None)
