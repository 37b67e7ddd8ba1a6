"""Resident engines: one per (model, engine kind, options) per process, shared by every task in it.

`engines(specs)` yields role -> engine as `registry.open_engines` does, but an engine is loaded the
first time any task of this process asks for it and kept for every later task. While a caller is
inside the block it holds each of its engines' locks, so two threads of one process (a Dask worker
with several threads, Prefect's local thread pool) never drive one engine at once; locks are taken
in one order, so callers needing several engines never deadlock. `close_all()` unloads them all:
at process exit (atexit), when a Dask worker stops (the worker plugin `flows/build.py` registers),
and in a local run after each model stage (the flow calls it, so one stage's engines at a time).
An engine whose model was rewritten in place is closed when the new contents' engine loads.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager

from pipeline.engines.base import Engine
from pipeline.engines.registry import EngineSpec, load_engine, spec_key

CLOSE_WAIT_S = 60.0  # close_all waits this long for a user to finish, then closes anyway

_guard = threading.Lock()  # the tables below
_locks: dict[str, threading.Lock] = {}  # spec key -> the lock of its engine
_resident: dict[str, Engine] = {}
_loads: Counter[str] = Counter()  # spec key -> engines loaded (1 while the pool does its job)
_uses: Counter[str] = Counter()  # spec key -> blocks that used it (tasks that ran a unit)
_latest: dict[str, str] = {}  # spec location (model as written, kind, options) -> its newest spec key


def _lock(key: str) -> threading.Lock:
    with _guard:
        return _locks.setdefault(key, threading.Lock())


def _location(spec: EngineSpec) -> str:
    model, kind, options = spec
    return json.dumps([str(model), kind, options], sort_keys=True, default=str)


def _close_superseded(key: str, spec: EngineSpec) -> None:
    """A model rewritten in place (same location, new identity) makes the engine of its old contents
    useless to later tasks: close it now rather than hold its memory until the worker stops, unless a
    task is still using it (its lock is held; never waited for: no lock-order deadlock), in which case
    `close_all` closes it."""
    with _guard:
        old = _latest.get(_location(spec))
        _latest[_location(spec)] = key
    if old is not None and old != key and old in _resident:
        _unload(old, wait=None)


def _unload(key: str, wait: float | None) -> None:
    """Close and forget the resident engine of `key` once its lock is free: waiting up to `wait`
    seconds and then closing anyway, or (None) only if it is free now."""
    lock = _lock(key)
    got = lock.acquire(blocking=False) if wait is None else lock.acquire(timeout=wait)
    if not got and wait is None:
        return
    try:
        with _guard:
            engine = _resident.pop(key, None)
        if engine is not None:
            engine.close()
    finally:
        if got:
            lock.release()


def _engine(key: str, spec: EngineSpec) -> Engine:
    """The resident engine of `key`, loaded now if needed (the caller holds its lock)."""
    engine = _resident.get(key)
    if engine is None:
        _close_superseded(key, spec)
        model, kind, options = spec
        engine = load_engine(model, kind, **options)
        with _guard:
            _resident[key] = engine
            _loads[key] += 1
    with _guard:
        _uses[key] += 1
    return engine


@contextmanager
def engines(specs: Mapping[str, EngineSpec]) -> Iterator[dict[str, Engine]]:
    """role -> resident engine for each spec, each held under its lock until the block ends; roles
    with the same model, kind and options share one engine."""
    keys = {role: spec_key(spec) for role, spec in specs.items()}
    by_key = {keys[role]: spec for role, spec in specs.items()}
    with ExitStack() as held:
        for key in sorted(by_key):
            held.enter_context(_lock(key))
        loaded = {key: _engine(key, spec) for key, spec in by_key.items()}
        yield {role: loaded[key] for role, key in keys.items()}


def close_all() -> None:
    """Close and forget every resident engine of this process (each once its user is done)."""
    with _guard:
        keys = list(_resident)
    for key in keys:
        _unload(key, CLOSE_WAIT_S)


def stats() -> dict:
    """This process's pool: pid, and per spec key how often it was loaded and used, and whether it
    is loaded now (tests and operators ask each Dask worker with `client.run(pool.stats)`)."""
    with _guard:
        return {"pid": os.getpid(), "engines": {
            key: {"loads": _loads[key], "uses": _uses[key], "resident": key in _resident}
            for key in sorted(_loads.keys() | _uses.keys())}}


def _forget_in_child() -> None:
    """A forked child does not own its parent's engines (nor its locks)."""
    global _guard
    _guard = threading.Lock()
    _locks.clear()
    _resident.clear()
    _loads.clear()
    _uses.clear()
    _latest.clear()


atexit.register(close_all)
os.register_at_fork(after_in_child=_forget_in_child)
