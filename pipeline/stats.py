"""Per-stage row accounting: rows_in = rows_out + rows_dropped, always."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field


class AccountingError(AssertionError):
    """A stage lost or invented rows."""


@dataclass
class StageStats:
    """Counts of one stage over one or more shards.

    rows_in/rows_out/rows_dropped count the stage's *input* rows (kept or dropped);
    outputs_written counts rows of the output table, which differs from rows_out for stages
    that expand (one conversation -> k candidates, one prompt -> several pairs).
    """

    stage: str
    rows_in: int = 0
    rows_out: int = 0
    rows_dropped: int = 0
    outputs_written: int = 0
    reasons: Counter = field(default_factory=Counter)
    unit_in: str | None = None  # what rows_in counts (conversations, candidates, pairs ...)
    unit_out: str | None = None  # what outputs_written counts

    def keep(self, outputs: int = 1, *, rows: int = 1) -> None:
        self.rows_in += rows
        self.rows_out += rows
        self.outputs_written += outputs

    def drop(self, reason: str) -> None:
        self.rows_in += 1
        self.rows_dropped += 1
        self.reasons[reason] += 1

    def check(self) -> "StageStats":
        if self.rows_in != self.rows_out + self.rows_dropped:
            raise AccountingError(
                f"{self.stage}: rows_in {self.rows_in} != rows_out {self.rows_out} "
                f"+ rows_dropped {self.rows_dropped}"
            )
        if sum(self.reasons.values()) != self.rows_dropped:
            raise AccountingError(f"{self.stage}: drop reasons do not sum to rows_dropped")
        return self

    def __iadd__(self, other: "StageStats") -> "StageStats":
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        self.rows_dropped += other.rows_dropped
        self.outputs_written += other.outputs_written
        self.reasons.update(other.reasons)
        self.unit_in = self.unit_in or other.unit_in
        self.unit_out = self.unit_out or other.unit_out
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reasons"] = dict(sorted(self.reasons.items()))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StageStats":
        return cls(**{**d, "reasons": Counter(d.get("reasons", {}))})

    @classmethod
    def total(cls, stage: str, parts: list["StageStats"]) -> "StageStats":
        out = cls(stage)
        for p in parts:
            out += p
        return out.check()
