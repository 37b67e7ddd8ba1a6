"""Each stage over a whole build: content-keyed (`runner.run_cached`), engines opened once per
stage run and only when some shard still needs them. The Prefect flow wraps these as tasks;
they take and return shard paths and small dicts only.

`inputs` everywhere is a list of (shard path, content identity) from `shard_inputs`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pipeline.recipe import Recipe
from pipeline.runner import run_cached, stage_key
from pipeline.stats import StageStats

Inputs = list[tuple[str, str]]


def shard_inputs(results: list[dict]) -> Inputs:
    """(shard path, its content identity) for every output shard of a list of stage results."""
    return [(path, f"{r['key']}/{Path(path).relative_to(r['dir'])}") for r in results for path in r["outputs"]]


def build_key(stage: str, inputs: Inputs, config: str) -> str:
    return stage_key(stage, [ident for _, ident in inputs], config)


class LazyEngines:
    """Opens a stage's engines on first use (all shards cached: never), closes them at the end."""

    def __init__(self, opener: Callable[[], dict]):
        self.opener = opener
        self.engines: dict = {}

    def get(self) -> dict:
        if not self.engines:
            self.engines = self.opener()
        return self.engines

    def __enter__(self) -> "LazyEngines":
        return self

    def __exit__(self, *exc) -> None:
        for engine in {id(e): e for e in self.engines.values()}.values():
            engine.close()


# --- prompt filters over all shards ------------------------------------------------------------

def dedup_config(recipe: Recipe, previous_indexes: list[str]) -> str:
    """Dedup's key config: its settings and the earlier versions' indexes it matches against."""
    return recipe.stage_config("dedup") + json.dumps(previous_indexes)


def run_dedup(recipe: Recipe, inputs: Inputs, work_root: Path, previous_indexes: list[str]) -> dict:
    from pipeline.filters.dedup import dedup_shards

    config = dedup_config(recipe, previous_indexes)
    return run_cached(work_root, "dedup", build_key("dedup", inputs, config), lambda out: dedup_shards(
        [Path(s) for s, _ in inputs], out, recipe.dedup, [Path(p) for p in previous_indexes]))


def run_decontam(recipe: Recipe, inputs: Inputs, work_root: Path) -> dict:
    from pipeline.filters.decontam import decontaminate_shards

    return run_cached(work_root, "decontam", build_key("decontam", inputs, recipe.stage_config("decontam")),
                      lambda out: decontaminate_shards([Path(s) for s, _ in inputs], out, recipe.decontam))


# --- model stages, one engine set per stage run ------------------------------------------------

def open_generators(recipe: Recipe) -> dict:
    from pipeline.engines.registry import load_engine
    from pipeline.generate import open_http_engine

    engines, shared = {}, {}
    for spec in recipe.generate.models:
        if spec.engine == "http":
            engines[spec.name] = open_http_engine(spec)
            continue
        model = spec.model or spec.name
        key = (model, spec.engine, json.dumps(spec.options, sort_keys=True))
        if key not in shared:
            shared[key] = load_engine(model, spec.engine, **spec.options)
        engines[spec.name] = shared[key]
    return engines


def run_generate(recipe: Recipe, inputs: Inputs, work_root: Path) -> list[dict]:
    from pipeline.cache import RequestCache
    from pipeline.generate import generate_shard

    config = recipe.stage_config("generate")
    with LazyEngines(lambda: open_generators(recipe)) as engines, \
            RequestCache.in_work_dir(work_root) as cache:
        return [run_cached(work_root, "generate", stage_key("generate", [ident], config),
                           lambda out, s=shard: generate_shard(Path(s), out, recipe.generate, engines.get(), cache))
                for shard, ident in inputs]


def run_annotate(recipe: Recipe, inputs: Inputs, work_root: Path) -> list[dict]:
    from pipeline.annotate.eval import open_engines
    from pipeline.annotate.stage import annotate_shard

    config = recipe.stage_config("annotate", "generate")
    with LazyEngines(lambda: open_engines(recipe.annotate)) as engines:
        return [run_cached(work_root, "annotate", stage_key("annotate", [ident], config),
                           lambda out, s=shard: annotate_shard(Path(s), out, recipe.annotate, engines.get()))
                for shard, ident in inputs]


# --- pairs and pair filters --------------------------------------------------------------------

def source_pairs_one(recipe: Recipe, shard: str, key: str, work_root: Path) -> dict:
    """Pairs from one conversation shard's own chosen/rejected responses."""
    from pipeline.pairs import source_pairs

    return run_cached(work_root, "pairs", key,
                      lambda out: source_pairs(Path(shard), out, recipe.ingest.shard_rows))


def scored_pairs_one(recipe: Recipe, candidates: dict, annotations: dict, key: str, work_root: Path) -> dict:
    """Pairs from one shard's candidates and their annotations (and pairwise verdicts)."""
    from pipeline.pairs import build_pairs

    comparison = sorted(Path(annotations["dir"]).glob("comparison-*.parquet"))
    return run_cached(work_root, "pairs", key, lambda out: build_pairs(
        Path(candidates["outputs"][0]), Path(annotations["outputs"][0]) if annotations["outputs"] else None,
        out, recipe.pairs, comparison[0] if comparison else None, recipe.ingest.shard_rows))


def length_one(recipe: Recipe, shard: str, key: str, work_root: Path) -> dict:
    from pipeline.filters.length import length_shard

    return run_cached(work_root, "length", key, lambda out: length_shard(
        Path(shard), out, recipe.filters.length, recipe.ingest.shard_rows))


def run_margin(recipe: Recipe, inputs: Inputs, work_root: Path) -> dict:
    from pipeline.filters.margin import margin_build

    def compute(out: Path) -> StageStats:
        return StageStats.total("margin", margin_build([Path(s) for s, _ in inputs], out, recipe.filters.margin,
                                                       recipe.ingest.shard_rows))

    return run_cached(work_root, "margin", build_key("margin", inputs, recipe.stage_config("filters")),
                      compute, outputs="*/part-*.parquet")


def run_ches(recipe: Recipe, inputs: Inputs, work_root: Path) -> dict:
    from pipeline.filters.ches import ches_build, open_engine

    def compute(out: Path) -> StageStats:
        with LazyEngines(lambda: {"ches": open_engine(recipe.filters.ches)}) as engines:
            scoring, kept = ches_build([Path(s) for s, _ in inputs], out, recipe.filters.ches,
                                       engines.get()["ches"], recipe.ingest.shard_rows)
        (out / "ches_scoring.json").write_text(json.dumps(scoring.to_dict()))
        total = StageStats.total("ches", kept)
        # Pairs the scoring step could not score are drops of this stage too.
        total.rows_in += scoring.rows_dropped
        total.rows_dropped += scoring.rows_dropped
        total.reasons.update(scoring.reasons)
        return total

    return run_cached(work_root, "ches", build_key("ches", inputs, recipe.stage_config("filters")),
                      compute, outputs="kept/*/part-*.parquet")


# --- what the manifest records besides the funnel ------------------------------------------------

def manifest_extras(recipe: Recipe, stage_results: dict[str, list[dict]]) -> tuple[dict, dict[str, Path]]:
    """(manifest sections, extra files to publish) gathered from the stage outputs."""
    extra: dict = {}
    files: dict[str, Path] = {}
    models: dict = {}
    if recipe.generate is not None:
        models["generators"] = [{"name": m.name, "model": m.model or m.name, "engine": m.engine, "k": m.k}
                                for m in recipe.generate.models]
    if recipe.annotate is not None:
        refs = {role: getattr(recipe.annotate.models, role).model for role in recipe.annotate.roles()}
        models["annotator"] = {"method": recipe.annotate.method, **refs}
        if "judge" in refs:
            models["judge"] = refs["judge"]
        if "strong" in refs:
            models["density_ratio"] = {"strong": refs["strong"], "weak": refs["weak"]}
    if recipe.filters.ches is not None:
        models["ches_model"] = recipe.filters.ches.model
        extra["ches"] = {"threshold": recipe.filters.ches.threshold,
                         "fraction": recipe.filters.ches.top_fraction, "score": recipe.filters.ches.score}
    if models:
        extra["models"] = models
    if "annotate" in stage_results:
        from pipeline.annotate.reliability import self_preference
        from pipeline.annotate.stage import judge_reliability

        stats_files = [p for r in stage_results["annotate"] for p in Path(r["dir"]).glob("annotate_stats.json")]
        if stats_files:
            extra["judge_reliability"] = judge_reliability(stats_files)
        generators = {m.model or m.name for m in recipe.generate.models}
        warnings = self_preference({k: v for k, v in models.get("annotator", {}).items() if k != "method"},
                                   generators)
        extra["warnings"] = warnings
    if "dedup" in stage_results:
        reasons = stage_results["dedup"][0]["stats"]["reasons"]
        extra["dedup"] = {k: reasons.get(f"{k}_duplicate", 0) for k in ("exact", "near", "semantic")}
        index = Path(stage_results["dedup"][0]["dir"]) / "index"
        files.update({f"index/dedup/{p.relative_to(index)}": p for p in index.rglob("*") if p.is_file()})
    if "decontam" in stage_results:
        from pipeline.filters.decontam import REPORT_FILE

        report = Path(stage_results["decontam"][0]["dir"]) / REPORT_FILE
        if report.exists():
            extra["decontamination"] = json.loads(report.read_text())
            files[f"reports/{REPORT_FILE}"] = report
    from pipeline.filters.length import length_bias

    final = [Path(p) for r in list(stage_results.values())[-1] for p in r["outputs"]]
    extra["length_bias"] = length_bias(final)
    if "pairs" in stage_results:
        candidates = [p for r in stage_results["pairs"] for p in sorted(Path(r["dir"]).glob("candidates-*.parquet"))]
        files.update({f"candidates/candidates-{i:05d}.parquet": p for i, p in enumerate(candidates)})
    return extra, files
