"""How far a run's annotations can be trusted: position-flip rate, first-position win rate,
longer-response win rate (counts kept so shards aggregate), and the self-preference warning."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import PurePath


@dataclass
class Reliability:
    comparisons_both_orders: int = 0  # pairs with a parsed verdict in each order
    flips: int = 0  # ... whose two verdicts name different winners
    order_verdicts: int = 0  # parsed single-order verdicts (each order counts once)
    first_position_wins: int = 0  # ... that chose the response shown first
    decided_unequal_length: int = 0  # final non-tie outcomes between responses of different length
    longer_wins: int = 0  # ... won by the longer response

    def add_comparison(self, comp, len_a: int, len_b: int) -> None:
        """A `judge.Comparison` between responses of `len_a` and `len_b` characters."""
        if comp.verdict_ab is not None:
            self.order_verdicts += 1
            self.first_position_wins += comp.verdict_ab == "a"
        if comp.verdict_ba is not None:
            self.order_verdicts += 1
            self.first_position_wins += comp.verdict_ba == "b"
        if comp.flipped is not None:
            self.comparisons_both_orders += 1
            self.flips += comp.flipped
        if comp.verdict is not None:
            self.add_outcome(comp.verdict, len_a, len_b)

    def add_outcome(self, winner: str, len_a: int, len_b: int) -> None:
        if winner in ("a", "b") and len_a != len_b:
            self.decided_unequal_length += 1
            self.longer_wins += (winner == "a") == (len_a > len_b)

    def add_scores(self, score_a: float, score_b: float, len_a: int, len_b: int, tie_margin: float) -> None:
        if abs(score_a - score_b) > tie_margin:
            self.add_outcome("a" if score_a > score_b else "b", len_a, len_b)

    def __iadd__(self, other: "Reliability") -> "Reliability":
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)
        return self

    def to_dict(self) -> dict:
        def rate(n: int, d: int) -> float | None:
            return n / d if d else None

        return {
            "flip_rate": rate(self.flips, self.comparisons_both_orders),
            "first_position_win_rate": rate(self.first_position_wins, self.order_verdicts),
            "longer_response_win_rate": rate(self.longer_wins, self.decided_unequal_length),
            "counts": asdict(self),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Reliability":
        return cls(**d["counts"])


def merge(stats: list[dict]) -> dict:
    """Aggregate the `reliability` dicts of several shards (for the manifest)."""
    total = Reliability()
    for s in stats:
        total += Reliability.from_dict(s)
    return total.to_dict()


def _name(model: str) -> str:
    return PurePath(model.rstrip("/")).name.lower()


def self_preference(annotators: dict[str, str], generators: set[str]) -> list[str]:
    """Warnings for annotator models (role -> model id) that also generated candidates."""
    gen = {_name(g) for g in generators if g}
    return [f"{role} model {model!r} also generated candidates (self-preference bias)"
            for role, model in sorted(annotators.items()) if _name(model) in gen]
