"""The YAML recipe: what to ingest, which stages to run with which parameters, what to publish.

Validated by pydantic before any work: unknown keys, duplicate keys and lax types are rejected
and every error names the file and the field (`recipe.yaml: inputs.0.format: ...`). YAML is loaded
with the safe loader only. Paths are relative to the recipe file; the environment variables named
by `api_key_env` must be set. Stage sections are optional: a stage runs only when the recipe names it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Annotated, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from pipeline.annotate.config import AnnotateConfig
from pipeline.config import FORMATS, IngestConfig, InputSpec, RecipeError, Strict, env_var_problem, format_error
from pipeline.engines.base import GENERATE, REWARD, SCORE, TOP_LOGPROBS
from pipeline.engines.registry import capabilities
from pipeline.filters.ches import ChesConfig
from pipeline.filters.decontam import DecontamConfig
from pipeline.filters.dedup import DedupConfig
from pipeline.filters.length import LengthConfig
from pipeline.filters.margin import MarginConfig
from pipeline.generate import GenerateConfig
from pipeline.ids import canonical_json, content_id
from pipeline.ingest.readers import path_problem
from pipeline.names import check_dataset_name
from pipeline.pairs import PairsConfig

__all__ = ["FORMATS", "IngestConfig", "InputSpec", "Recipe", "RecipeError", "Strict", "load_annotate_config",
           "load_recipe", "load_yaml", "parse_recipe", "resolve_paths"]

# Every path field (`*`: each item of a list, each value of a mapping), resolved against the
# recipe's directory, and what must be there: "any" (file or directory), "file" or None (the
# decontam registry is checked with its benchmark files, a cache directory is created).
PATH_FIELDS: dict[str, str | None] = {
    "inputs.*.path": "any",
    "decontam.registry": None,
    "decontam.benchmarks_root": None,
    "decontam.cache_dir": None,
    "annotate.templates.pointwise": "file",
    "annotate.templates.pairwise": "file",
    "annotate.gate.gold": "file",
    "annotate.ensemble.gold.*": "file",
    "annotate.safety_head.path": "file",
    "annotate.ensemble.weights": "file",
}
# Model fields: a value written as a path ("./m", "../m", "~/m", "/m") names a local model directory,
# relative to the recipe like every path; anything else is a registry name, hub id or served name.
MODEL_FIELDS = ("generate.models.*.model", "annotate.models.*.model", "filters.ches.model", "dedup.semantic.model")
PATH_LIKE = ("./", "../", "~", "/")
# Fields naming the environment variable that holds an HTTP engine's API key.
ENV_FIELDS = ("generate.models.*.api_key_env", "annotate.models.*.options.api_key_env")

ANNOTATOR_NEEDS = {"judge": {GENERATE}, "strong": {SCORE}, "weak": {SCORE}, "reward": {REWARD}}


class FiltersConfig(Strict):
    """Pair filters, applied in this order: length guard, margin, CHES."""

    length: LengthConfig | None = None
    margin: MarginConfig | None = None
    ches: ChesConfig | None = None


class OutputConfig(Strict):
    dataset: str
    license: str | None = Field(None, description="Licence of the published dataset")

    @field_validator("dataset")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_dataset_name(v)


class Recipe(Strict):
    description: str = ""
    inputs: Annotated[list[InputSpec], Field(min_length=1)]
    ingest: IngestConfig = IngestConfig()
    dedup: DedupConfig | None = Field(None, description="Deduplicate prompts after ingest")
    decontam: DecontamConfig | None = Field(None, description="Drop prompts that overlap benchmarks")
    generate: GenerateConfig | None = Field(None, description="Candidate responses per prompt")
    annotate: AnnotateConfig | None = Field(None, description="Score candidates")
    pairs: PairsConfig = PairsConfig()
    filters: FiltersConfig = FiltersConfig()
    output: OutputConfig

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        paths = [i.path for i in self.inputs]
        if len(set(paths)) != len(paths):
            raise ValueError("inputs: the same path is listed twice")
        if self.pairs.rule == "source":
            if self.annotate is not None:
                raise ValueError("pairs.rule: 'source' ignores annotation scores; choose a scored rule "
                                 "(best_vs_worst, best_vs_random_lower, all_above_margin, pairwise_winners)")
        elif self.annotate is None:
            raise ValueError(f"pairs.rule: '{self.pairs.rule}' needs scores: add an annotate section")
        if self.pairs.rule == "pairwise_winners" and self.annotate.method != "judge_pairwise":
            raise ValueError("pairs.rule: 'pairwise_winners' needs annotate.method: judge_pairwise")
        if self.annotate is not None and self.generate is None:
            raise ValueError("annotate: needs candidates: add a generate section (models and/or "
                             "include_source_responses: true)")
        if self.generate is not None and self.annotate is None:
            raise ValueError("generate: candidates need scores to become pairs: add an annotate section")
        self._check_engines()
        self._check_score_scales()
        return self

    def _check_score_scales(self) -> None:
        """With a safety head, a prompt's scores come from the head or from the density ratio, two
        scales: a raw-score threshold across prompts would mean different things on each route."""
        if self.annotate is None or self.annotate.safety_head is None:
            return
        margin = self.filters.margin
        raw_margin = margin is not None and not margin.normalized
        normalize = "set filters.margin.normalized: true (margins relative to each prompt's score spread)"
        raw = [("pairs.tau", self.pairs.rule == "all_above_margin", "use rule best_vs_worst or best_vs_random_lower"),
               ("pairs.tie_tolerance", self.pairs.tie_tolerance > 0, "leave it at 0"),
               *((f"filters.margin.{f}", raw_margin and getattr(margin, f) is not None, normalize)
                 for f in ("min_margin", "max_margin", "budget"))]
        for field, used, fix in raw:
            if used:
                raise ValueError(f"{field}: a raw score threshold does not fit annotate.safety_head, whose "
                                 f"prompts are scored on the head's scale and the rest on the density "
                                 f"ratio's; {fix}")

    def _check_engines(self) -> None:
        """A stage asking an engine for what it cannot do fails here, before any work."""
        uses: list[tuple[str, str, set[str]]] = []
        for i, m in enumerate(self.generate.models if self.generate else []):
            uses.append((f"generate.models.{i}", m.engine, {GENERATE}))
        if self.annotate is not None:
            for role in self.annotate.roles():
                ref = getattr(self.annotate.models, role)
                needs = set(ANNOTATOR_NEEDS[role])
                if role == "judge" and self.annotate.expectation:
                    needs.add(TOP_LOGPROBS)
                uses.append((f"annotate.models.{role}", ref.engine, needs))
        for where, engine, needs in uses:
            offers = capabilities(engine)  # read from the engine classes
            missing = sorted(needs - offers)
            if missing:
                raise ValueError(f"{where}: engine {engine} does not support {', '.join(missing)} "
                                 f"(it supports {', '.join(sorted(offers))})")

    def resolved(self) -> dict:
        """The recipe as plain data (defaults filled in), as recorded in manifests."""
        return self.model_dump(mode="json")

    def keyed(self) -> dict:
        """`resolved()` as build and stage keys see it (`keyed_models`)."""
        return keyed_models(self.resolved())

    def hash(self) -> str:
        return content_id("r", self.resolved())

    @staticmethod
    def file_hashes(data: dict) -> dict[str, str]:
        """sha256 of every file named in recipe data besides the inputs (judge templates, gold
        files) and of the decontamination benchmarks, by field: what a build reads besides its
        inputs, so that a file changed in place changes the keys of the work it feeds."""
        from pipeline.filters.decontam import benchmarks_digest, load_registry
        from pipeline.keys import content_hash

        out = {loc: content_hash(Path(obj[key])) for pattern, kind in PATH_FIELDS.items() if kind == "file"
               for loc, obj, key in fields_at(data, pattern)}
        if (d := data.get("decontam")) is not None:
            root, specs = load_registry(d.get("registry"), d.get("benchmarks_root"), d.get("benchmarks"))
            out["decontam.benchmarks"] = benchmarks_digest(root, specs)
        return out

    def stage_config(self, *sections: str) -> str:
        """Canonical JSON of some recipe sections and of the files they name: part of a stage's
        cache key."""
        data = self.keyed()
        if data.get("annotate"):  # the gate decides whether a stage runs, never what it writes
            data["annotate"] = {k: v for k, v in data["annotate"].items() if k != "gate"}
            if data["annotate"].get("ensemble"):  # where the gold or the fit file lies does not
                # matter: the stage adds the weights fitted on it or read from it (AnnotateStage.config)
                data["annotate"]["ensemble"] = {k: v for k, v in data["annotate"]["ensemble"].items()
                                                if k not in ("gold", "weights")}
        chosen = {s: data.get(s) for s in sections}
        return canonical_json({**chosen, "files": self.file_hashes(chosen)})


M = TypeVar("M", bound=BaseModel)


def fields_at(data: object, pattern: str) -> list[tuple[str, dict | list, str | int]]:
    """(dotted location, mapping or list, key or index) of each value set at `pattern` in raw recipe data."""
    found: list[tuple[str, object]] = [("", data)]
    *parents, last = pattern.split(".")
    for part in parents:
        step = []
        for loc, obj in found:
            if part == "*":
                items = enumerate(obj) if isinstance(obj, list) else obj.items() if isinstance(obj, dict) else ()
            else:
                items = [(part, obj[part])] if isinstance(obj, dict) and part in obj else ()
            step += [(f"{loc}{k}.", v) for k, v in items]
        found = step
    if last == "*":  # each item of a list
        return [(f"{loc}{i}", obj, i) for loc, obj in found if isinstance(obj, list)
                for i, v in enumerate(obj) if v is not None]
    return [(loc + last, obj, last) for loc, obj in found if isinstance(obj, dict) and obj.get(last) is not None]


def keyed_models(data: dict) -> dict:
    """Recipe data (resolved; changed in place and returned) with every model field by its
    identity (`engines.identity`: a local directory by name and digest of its files), so a model
    rewritten in place changes the keys and a moved copy keeps them."""
    from pipeline.engines.identity import model_identity

    for generator in (data.get("generate") or {}).get("models") or []:
        generator["model"] = generator.get("model") or generator["name"]  # the default: its name
    for pattern in MODEL_FIELDS:
        for _, obj, key in fields_at(data, pattern):
            obj[key] = model_identity(obj[key], obj.get("engine"))
    return data


def path_models(data: object) -> list[tuple[str, dict | list, str | int]]:
    """The model fields (`MODEL_FIELDS`) of raw recipe data written as a path, not a served name."""
    return [(loc, obj, key) for pattern in MODEL_FIELDS for loc, obj, key in fields_at(data, pattern)
            if isinstance(obj[key], str) and obj.get("engine") != "http" and obj[key].startswith(PATH_LIKE)]


def resolve_paths(data: dict, base_dir: Path) -> tuple[dict, list[tuple[str, Path, str, str | None]]]:
    """A copy of `data` with every path field absolute (relative ones are relative to `base_dir`),
    and (location, path, path as written, what must be there) of each."""
    data, paths = copy.deepcopy(data), []
    fields = [(*f, must) for pattern, must in PATH_FIELDS.items() for f in fields_at(data, pattern)]
    for loc, obj, key, must_exist in fields + [(*f, "dir") for f in path_models(data)]:
        if isinstance(obj[key], str):  # anything else is a type error, reported by validation
            path = base_dir / Path(obj[key]).expanduser()
            paths.append((loc, path, obj[key], must_exist))
            try:
                obj[key] = str(path.resolve())
            except (OSError, RuntimeError, ValueError):  # a loop or NUL: reported as such below
                obj[key] = str(path)
    return data, paths


def _path_problem(path: Path, must_exist: str | None) -> str | None:
    """Why `path` is not what the field needs ("any", "file" or "dir"), or None."""
    if must_exist is None:
        return None
    try:
        problem = path_problem(path)
    except ValueError:  # NUL in the path
        return "invalid path"
    if problem is None and must_exist == "dir" and not path.is_dir():
        return "not a model directory"
    return "not a file" if problem is None and must_exist == "file" and not path.is_file() else problem


def _validate(model: type[M], data: dict, source: str, base_dir: Path | None, check_env: bool,
              section: str = "") -> M:
    """`model` from `data` (or from its `section`). With `base_dir`, path fields are resolved
    against it and must lead somewhere; every `api_key_env` must name a variable (set, when
    `check_env`), not hold a key."""
    paths = []
    if base_dir is not None:
        data, paths = resolve_paths(data, base_dir)
    try:
        result = model.model_validate(data[section] if section else data)
    except ValidationError as err:
        raise RecipeError(format_error(source, err, section, model)) from None
    for loc, path, written, must_exist in paths:
        if (problem := _path_problem(path, must_exist)) is not None:
            raise RecipeError(f"{source}: {loc}: {problem}: {written}")
    if paths:
        _check_file_contents(data, source)
    for pattern in ENV_FIELDS:
        for loc, obj, key in fields_at(data, pattern):
            if (problem := env_var_problem(obj[key], require_set=check_env)) is not None:
                raise RecipeError(f"{source}: {loc}: {problem}")
    return result


def _check_file_contents(data: dict, source: str) -> None:
    """Files a stage would read late are read now: a malformed one fails before any work."""
    from pipeline.annotate import safety_head

    from pipeline.annotate import ensemble_fit

    for pattern, load in (("annotate.safety_head.path", safety_head.load),
                          ("annotate.ensemble.weights", ensemble_fit.read_fit)):
        for loc, obj, key in fields_at(data, pattern):
            try:
                load(obj[key])
            except ValueError as err:
                raise RecipeError(f"{source}: {loc}: {err}") from None


def parse_recipe(data: object, source: str = "<recipe>", base_dir: Path | None = None,
                 check_env: bool = True) -> Recipe:
    """Validate recipe data; with `base_dir`, path fields are resolved against it and the files
    they name must exist. `check_env=False` skips checking that the `api_key_env` variables are
    set (a recipe prepared here to run elsewhere)."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: (top level): expected a mapping, got {type(data).__name__}")
    recipe = _validate(Recipe, data, source, base_dir, check_env)
    if base_dir is not None and recipe.decontam is not None:
        _check_decontam(recipe.decontam, source)
    return recipe


def _check_decontam(config: DecontamConfig, source: str) -> None:
    """Every benchmark file of the registry must exist."""
    from pipeline.filters.decontam import load_registry

    try:
        root, specs = load_registry(config.registry, config.benchmarks_root, config.benchmarks)
    except (OSError, ValueError) as err:
        raise RecipeError(f"{source}: decontam.registry: {err}") from None
    missing = [str(root / s.file) for s in specs if not (root / s.file).is_file()]
    if missing:
        raise RecipeError(f"{source}: decontam.benchmarks_root: {len(missing)} benchmark file(s) not found, "
                          f"e.g. {missing[0]} (point decontam.benchmarks_root at your copies, or list "
                          f"the ones you have in decontam.benchmarks)")


def _duplicate_keys(root: yaml.Node, source: str) -> list[str]:
    """`FILE: dotted.key: duplicate key ...` for each key repeated in a mapping (merge keys `<<`
    may override), in document order."""
    found: list[tuple[int, str]] = []
    stack, seen = [(root, "")], set()
    while stack:
        node, loc = stack.pop()
        if id(node) in seen:  # an alias
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack += [(item, f"{loc}{i}.") for i, item in enumerate(node.value)]
        elif isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                    stack.append((value, f"{loc}?."))
                    continue
                line = key.start_mark.line + 1
                if (key.tag, key.value) in first:
                    found.append((line, f"{source}: {loc}{key.value}: duplicate key on line {line} "
                                        f"(first on line {first[key.tag, key.value]})"))
                first.setdefault((key.tag, key.value), line)
                stack.append((value, f"{loc}{key.value}."))
    return [message for _, message in sorted(found)]


def load_yaml(text: str, source: str) -> object:
    """YAML with the safe loader; a duplicate key at any depth is an error (file, key, line)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        duplicates = _duplicate_keys(node, source)
        if duplicates:
            raise RecipeError("\n".join(duplicates))
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise RecipeError(f"{source}: invalid YAML: {err}") from None
    finally:
        loader.dispose()


def _read(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"{path}: cannot read recipe: {err}") from None
    return load_yaml(text, str(path))


def load_recipe(path: str | Path, check_env: bool = True) -> Recipe:
    """The recipe file, validated; paths relative to its directory (see `parse_recipe`)."""
    path = Path(path)
    return parse_recipe(_read(path), source=str(path), base_dir=path.resolve().parent, check_env=check_env)


def load_annotate_config(path: str | Path, check_env: bool = True) -> AnnotateConfig:
    """Only the `annotate` section of a recipe file (eval-annotator), checked as `load_recipe` checks it."""
    path = Path(path)
    data = _read(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotate"), dict):
        raise RecipeError(f"{path}: annotate: the recipe has no annotate section")
    return _validate(AnnotateConfig, {"annotate": data["annotate"]}, str(path), path.resolve().parent,
                     check_env, "annotate")


def export_json_schema(path: Path) -> None:
    path.write_text(json.dumps(Recipe.model_json_schema(), indent=2) + "\n")


if __name__ == "__main__":  # pragma: no cover - maintenance entry point: python -m pipeline.recipe
    from pipeline.tables import export

    schemas = Path(__file__).resolve().parent.parent / "schemas"
    export(schemas)
    export_json_schema(schemas / "recipe.schema.json")
