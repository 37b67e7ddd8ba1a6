"""The seam every stage goes through (datatrove's PipelineStep, NeMo Curator's ProcessingStage).

A `Stage` declares its name, the recipe sections its content key covers, its kind, the units it
reads and writes, the engine roles it needs, and `run(unit, out, resources) -> StageStats`. It
turns upstream results into `Unit`s of work (one per shard, or one for the whole build); an
executor (`pipeline.runner.run_units` locally, `flows/build.py` on Prefect) only decides where
units run. Results cross the seam as `StageResult`s: paths and counts, never rows.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from pipeline.engines import pool
from pipeline.engines.registry import EngineSpec
from pipeline.keys import stage_key
from pipeline.recipe import Recipe
from pipeline.stats import StageStats

Kind = Literal["shard", "build"]  # shard: one task per unit; build: one task runs every unit


class StageResult(BaseModel):
    """One finished stage directory: its shards (read by the next stage), drops and counts."""

    model_config = ConfigDict(frozen=True)

    stage: str
    dir: str
    outputs: list[str]
    dropped: list[str]
    stats: dict
    key: str
    cached: bool = False

    def shards(self) -> list[tuple[str, str]]:
        """(shard path, its content identity) for every output shard."""
        return [(p, f"{self.key}/{Path(p).relative_to(self.dir)}") for p in self.outputs]


class Unit(BaseModel):
    """One piece of a stage's work: input paths, their content identities, stage parameters."""

    model_config = ConfigDict(frozen=True)

    inputs: list[str]
    identities: list[str]
    params: dict = {}


@dataclass
class BuildContext:
    """What a build knows besides its recipe."""

    work_root: Path
    versions: list[Path] = field(default_factory=list)  # earlier versions of the dataset
    incremental: bool = False
    plans: list[dict] = field(default_factory=list)  # per input: what to read (incremental.plan_inputs)
    force: bool = False  # build even where a check says not to (the annotator gate)


class Stage:
    """Base of every stage. Subclasses set the class attributes and `run`."""

    name: ClassVar[str]
    sections: ClassVar[tuple[str, ...]]  # recipe sections in the content key
    kind: ClassVar[Kind] = "shard"
    unit_in: ClassVar[str]
    unit_out: ClassVar[str]
    roles: ClassVar[tuple[str, ...]] = ()  # engine roles it opens (model stages)
    outputs: ClassVar[str] = "part-*.parquet"  # glob of the shards the next stage reads
    ends_build_when_empty: ClassVar[bool] = False  # nothing out: the build has nothing new
    # A step the executor runs first over this stage's upstream, whose outputs become this stage's
    # upstream (CHES: scoring per shard, then the cut over the whole build). It has no funnel row of
    # its own, so it must drop nothing (the executor checks); it is not in the registry.
    prelude: ClassVar[type[Stage] | None] = None

    def __init__(self, recipe: Recipe, context: BuildContext):
        self.recipe = recipe
        self.context = context

    @classmethod
    def enabled(cls, recipe: Recipe, context: BuildContext) -> bool:
        """Whether the recipe asks for this stage."""
        return True

    def config(self) -> str:
        """The configuration part of the content key."""
        return self._sections_config

    @functools.cached_property
    def _sections_config(self) -> str:  # read once per stage object: it hashes the files named
        return self.recipe.stage_config(*self.sections)

    def key(self, unit: Unit) -> str:
        """The content key of a unit: input identities + stage config + code version. The one place."""
        return stage_key(self.name, unit.identities, self.config())

    def units(self, upstream: list[StageResult], earlier: dict[str, list[StageResult]]) -> list[Unit]:
        """One unit per shard of the previous stage (`upstream`; kind shard) or one over all of them
        (kind build). `earlier`: every earlier stage's results, for stages that read more than one."""
        shards = [s for r in upstream for s in r.shards()]
        if self.kind == "build":
            return [Unit(inputs=[p for p, _ in shards], identities=[i for _, i in shards])]
        return [Unit(inputs=[p], identities=[i]) for p, i in shards]

    def preflight(self) -> str | None:
        """Checks before any stage of the build runs (raise to stop it); a line to report, or None."""
        return None

    @contextmanager
    def resources(self) -> Iterator[dict]:
        """What every unit of one task shares (engines, request caches), opened lazily."""
        yield {}

    def run(self, unit: Unit, out: Path, resources: dict) -> StageStats:
        raise NotImplementedError

    def manifest(self, results: list[StageResult]) -> tuple[dict, dict[str, Path]]:
        """(manifest sections, extra files to publish: relative path -> file) of this stage."""
        return {}, {}

    def progress_labels(self) -> list[str]:
        """The labels this stage reports its progress under (`pipeline.progress`), each counting unit_in."""
        return [self.name]


class LazyEngines:
    """A task's engines, taken on first use (all units cached: never) from the process's resident
    pool (`pipeline.engines.pool`: loaded once per process, held under their locks by this task)
    and handed back, not closed, at the end."""

    def __init__(self, specs: Mapping[str, EngineSpec]):
        self.specs = specs
        self.engines: dict = {}
        self._held = ExitStack()

    def get(self) -> dict:
        if not self.engines:
            self.engines = self._held.enter_context(pool.engines(self.specs))
        return self.engines

    def close(self) -> None:
        self.engines = {}
        self._held.close()


@contextmanager
def lazy_engines(specs: Mapping[str, EngineSpec]) -> Iterator[LazyEngines]:
    engines = LazyEngines(specs)
    try:
        yield engines
    finally:
        engines.close()


def json_config(*parts) -> str:
    return json.dumps(parts, sort_keys=True, default=str)
