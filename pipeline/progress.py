"""Progress reporting from stages to whoever listens (the CLI's progress bars)."""

from __future__ import annotations

from collections.abc import Callable

_listeners: list[Callable[[str, int], None]] = []


def subscribe(listener: Callable[[str, int], None]) -> Callable[[], None]:
    """Register `listener(stage, rows_done_since_last_call)`; returns an unsubscribe function."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def report(stage: str, rows: int) -> None:
    for listener in list(_listeners):
        listener(stage, rows)
