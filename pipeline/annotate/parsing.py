"""Strict parsing of judge outputs: exactly one `[[...]]` marker holding a valid rating or verdict,
or, with no marker at all, a last line that is only `Rating: N` / `Verdict: X` (the asked-for line
without its brackets, which small instruction models write more often than not).

Anything else (no marker, two markers, a number out of range, a fraction, a word, a rating inside a
sentence) is a `ParseError` with a machine-readable reason; the caller retries and finally records
the failure with the raw text. There is no guessing and no default score.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MARKER = re.compile(r"\[\[([^\[\]\n]{0,20})\]\]")
LAST_LINE = re.compile(r"(?im)^[ \t]*(?:rating|verdict)[ \t]*:[ \t]*([^\s\[\]]{1,20})[ \t]*\Z")
VERDICTS = {"A": "A", "B": "B", "C": "C"}  # C: tie


class ParseError(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Parsed:
    value: str  # the marker's content ("4", "A")
    start: int  # character offset of the content in the judge output
    rationale: str  # the text before the marker line


def _one_marker(text: str) -> re.Match:
    markers = list(MARKER.finditer(text))
    bare = LAST_LINE.search(text.rstrip())
    if not markers:
        if bare is not None:
            return bare
        raise ParseError("no_marker", "no [[...]] marker in the judge output")
    if bare is not None:  # a marker and a bare rating line: two answers
        markers.append(bare)
    if len(markers) > 1:
        raise ParseError("multiple_markers", ", ".join(m.group(0) for m in markers[:5]))
    return markers[0]


def _rationale(text: str, match: re.Match) -> str:
    head = text[: match.start()]
    head = head[: head.rfind("\n")] if "\n" in head else re.sub(r"(?i)(rating|verdict)\s*:?\s*$", "", head)
    return head.strip()


def parse_rating(text: str, rating_min: int, rating_max: int) -> Parsed:
    match = _one_marker(text)
    content = match.group(1).strip()
    if not re.fullmatch(r"[+-]?\d+", content):
        raise ParseError("not_an_integer", f"{content!r}")
    value = int(content)
    if not rating_min <= value <= rating_max:
        raise ParseError("out_of_range", f"{value} not in {rating_min}..{rating_max}")
    return Parsed(str(value), match.start(1) + match.group(1).index(content), _rationale(text, match))


def parse_verdict(text: str) -> Parsed:
    match = _one_marker(text)
    content = match.group(1).strip()
    if content not in VERDICTS:
        raise ParseError("bad_verdict", f"[[{content}]] (expected [[A]], [[B]] or [[C]])")
    return Parsed(content, match.start(1) + match.group(1).index(content), _rationale(text, match))
