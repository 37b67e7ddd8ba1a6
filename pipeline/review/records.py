"""Review labels on disk: one append-only JSONL file per reviewer, beside the version it reviews.

`DATA_ROOT/datasets/NAME/reviews/vNNNN/labels-REVIEWER.jsonl` (never inside the immutable version
directory). Every label and every undo is one line, written and fsynced before the server answers,
so a killed server loses nothing it acknowledged; a torn last line (a kill mid-write) is skipped on
reading and never glued to the next record. Undo appends an `undo` record naming the pair; nothing
is ever rewritten. Replaying the file gives each pair's current label (`active_labels`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Literal, Union

from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from pipeline.publish.store import StoreError, dataset_dir

REVIEWER_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
Side = Literal["chosen", "rejected"]
Choice = Literal["left", "right", "tie", "skip"]


class ReviewError(ValueError):
    """A review request that cannot be served; `code` is the exit code (2: usage, 1: failure)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def check_reviewer(name: str) -> str:
    if not isinstance(name, str) or not REVIEWER_RE.match(name):
        raise ReviewError(f"invalid reviewer name {name!r}: use letters, digits, '.', '_' and '-' "
                          "(at most 64 characters, starting with a letter or digit)")
    return name


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    reviewer: str
    time: str = Field(default_factory=now)
    dataset: str
    version: str
    pair_id: str


class Label(_Record):
    """One judgement: `label` is what the reviewer pressed; `left` says which response sat left."""
    kind: Literal["label"] = "label"
    left: Side
    label: Choice
    seed: int
    stratum: str

    @property
    def preferred(self) -> Literal["chosen", "rejected", "tie"] | None:
        """The label in the pair's own terms: the published chosen or rejected, a tie, None (skip)."""
        if self.label in ("tie", "skip"):
            return None if self.label == "skip" else "tie"
        other = "rejected" if self.left == "chosen" else "chosen"
        return self.left if self.label == "left" else other


class Undo(_Record):
    """Withdraws the reviewer's current label of `pair_id` (their most recent one)."""
    kind: Literal["undo"] = "undo"


Record = Union[Label, Undo]
_RECORD = TypeAdapter(Record)


def reviews_dir(root: Path, name: str, version: str) -> Path:
    """Where a version's label files live: beside the versions, not inside one."""
    return dataset_dir(root, name) / "reviews" / version


def label_files(root: Path, name: str, version: str) -> list[Path]:
    return sorted(reviews_dir(root, name, version).glob("labels-*.jsonl"))


def read_records(path: Path) -> tuple[list[Record], int]:
    """(records in file order, lines that could not be read: a torn last line, a stray edit)."""
    records, bad = [], 0
    if not path.is_file():
        return records, bad
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            records.append(_RECORD.validate_python(json.loads(line)))
        except (ValueError, ValidationError):
            bad += 1
    return records, bad


def active_labels(records: list[Record]) -> dict[str, Label]:
    """pair_id -> current label, in the order they were made (an undo removes one)."""
    active: dict[str, Label] = {}
    for r in records:
        if isinstance(r, Undo):
            active.pop(r.pair_id, None)
        else:
            active.pop(r.pair_id, None)
            active[r.pair_id] = r
    return active


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LabelLog:
    """One reviewer's label file, held under a lock (one server per reviewer and version)."""

    def __init__(self, root: Path, name: str, version: str, reviewer: str):
        self.reviewer = check_reviewer(reviewer)
        directory = reviews_dir(root, name, version)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create {directory}: {err.strerror or err}: make the data root writable") from err
        self.path = directory / f"labels-{reviewer}.jsonl"
        self._lock = FileLock(str(self.path) + ".lock")
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise ReviewError(f"reviewer {reviewer} already has a review server open on {name}@{version} "
                              f"({self._lock.lock_file} is locked): use that one, or another --reviewer", code=1) from None
        existed = self.path.exists()
        self._file = open(self.path, "ab")
        if not existed:
            _fsync_dir(directory)
        elif self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n"):
            self._write(b"\n")  # a torn last line stays a line of its own
        self.records, self.unreadable = read_records(self.path)

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())

    def append(self, record: Record) -> None:
        """Durable on return: written, flushed and fsynced."""
        self._write(record.model_dump_json().encode("utf-8") + b"\n")
        self.records.append(record)

    def active(self) -> dict[str, Label]:
        return active_labels(self.records)

    def close(self) -> None:
        self._file.close()
        self._lock.release()
