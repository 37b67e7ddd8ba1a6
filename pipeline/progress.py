"""Progress reporting from stages to whoever listens (the CLI's progress bars).

Stages `report(label, rows)` as they go; the flow says beforehand how many rows a stage will read
(`expect`, from what the stages before it wrote) and when it is done (`finish`, which also covers a
stage reused from the cache or one that reports nothing on the way)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

Progress = Callable[[float], None]  # a step's callback: this many more of its items are done


class Listener(Protocol):
    def advance(self, label: str, rows: float) -> None: ...

    def expect(self, label: str, total: int | None) -> None: ...

    def finish(self, label: str, rows: int) -> None: ...


_listeners: list[Listener] = []


def subscribe(listener: Listener):
    """Register `listener`; returns an unsubscribe function."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def report(label: str, rows: float) -> None:
    """`rows` more input rows of `label` (a stage, or a step of one) are done."""
    for listener in list(_listeners):
        listener.advance(label, rows)


def expect(label: str, total: int | None) -> None:
    for listener in list(_listeners):
        listener.expect(label, total)


def finish(label: str, rows: int) -> None:
    """`label` is done, having read `rows` in all."""
    for listener in list(_listeners):
        listener.finish(label, rows)
