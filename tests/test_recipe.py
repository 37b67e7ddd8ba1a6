"""Recipes fail before any work, naming the file and the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.names import NameError_, parse_ref
from pipeline.recipe import Recipe, RecipeError, load_annotate_config, load_recipe
from pipeline.tables import TABLES, schema_to_json

REPO = Path(__file__).resolve().parents[1]
GOOD = """
inputs:
  - path: in.jsonl
output:
  dataset: demo
"""


@pytest.fixture
def recipe_dir(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n')
    return tmp_path


def write(d, text):
    p = d / "recipe.yaml"
    p.write_text(text)
    return p


def test_good_recipe_resolves_paths_next_to_the_recipe(recipe_dir):
    r = load_recipe(write(recipe_dir, GOOD))
    assert Path(r.inputs[0].path) == (recipe_dir / "in.jsonl").resolve()
    assert r.ingest.shard_rows == 1000


@pytest.mark.parametrize("text, field, message", [
    (GOOD + "extra_key: 1\n", "extra_key", "unknown key"),
    (GOOD.replace("path: in.jsonl", "path: in.jsonl\n    formt: openai"), "inputs.0.formt", "unknown key"),
    (GOOD + "ingest:\n  shard_rows: lots\n", "ingest.shard_rows", "integer"),
    (GOOD + "ingest:\n  shard_rows: 0\n", "ingest.shard_rows", "greater than or equal to 1"),
    (GOOD.replace("dataset: demo", "dataset: ../escape"), "output.dataset", "invalid dataset name"),
    (GOOD.replace("path: in.jsonl", "path: missing.jsonl"), "inputs.0.path", "no such file"),
    (GOOD.replace("- path: in.jsonl", "- path: in.jsonl\n    format: yaml"), "inputs.0.format", "Input should be"),
    (GOOD + "pairs: {rule: best_vs_worst}\n", "pairs.rule", "needs scores: add an annotate section"),  # cross-field
    (GOOD + "generate: {models: [{name: a, model: m}, {name: a, model: m}]}\n", "generate.models", "listed twice"),
])
def test_bad_recipe_names_file_and_field(recipe_dir, text, field, message):
    path = write(recipe_dir, text)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}: {field}: ")
    assert message in str(err.value) and "Value error" not in str(err.value)


@pytest.mark.parametrize("extra, field, suggestion", [
    ("dedupe: {}\n", "dedupe", "did you mean dedup?"),
    ("pairs: {rul: best_vs_worst}\n", "pairs.rul", "did you mean rule?"),
    ("filters:\n  lenght: {max_ratio: 2}\n", "filters.lenght", "did you mean length?"),
    ("filters:\n  ches: {top_fractoin: 0.1}\n", "filters.ches.top_fractoin", "did you mean top_fraction?"),
    ("generate:\n  models:\n    - {name: a, temprature: 0.5}\n", "generate.models.0.temprature",
     "did you mean temperature?"),
    ("annotate: {method: density_ratio, lenght_norm: none}\n", "annotate.lenght_norm", "did you mean length_norm?"),
    ("ingest: {zzz: 1}\n", "ingest.zzz", "known here: max_line_bytes, max_text_chars, shard_rows"),
])
def test_a_misspelled_key_names_the_key_it_is_closest_to(recipe_dir, extra, field, suggestion):
    path = write(recipe_dir, GOOD + extra)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert f"{path}: {field}: unknown key ({suggestion})" in str(err.value).splitlines()


def test_yaml_is_loaded_safely(recipe_dir):
    path = write(recipe_dir, "!!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(RecipeError, match="invalid YAML"):
        load_recipe(path)
    assert not (recipe_dir / "pwned").exists()


def test_cli_exits_2_before_any_work(recipe_dir, tmp_path):
    path = write(recipe_dir, GOOD + "stages: [everything]\n")
    root = tmp_path / "root"
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "build", str(path), "--data-root", str(root)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "stages: unknown key" in proc.stderr
    assert not root.exists()  # nothing was started or written


def test_exported_schemas_match_the_code():
    for name, schema in TABLES.items():
        exported = json.loads((REPO / "schemas" / f"{name}.schema.json").read_text())
        assert exported == schema_to_json(schema), f"schemas/{name}.schema.json is stale: python -m pipeline.recipe"
    assert json.loads((REPO / "schemas/recipe.schema.json").read_text()) == Recipe.model_json_schema()


STAGED = GOOD + """
generate:
  models: [{name: m, model: some-model, engine: vllm}]
annotate:
  method: reward_model
  models: {reward: {engine: http, model: rm}}
pairs: {rule: best_vs_worst}
"""


@pytest.mark.parametrize("text, field, message", [
    (STAGED, "annotate.models.reward", "engine http does not support reward"),
    (STAGED.replace("engine: http, model: rm", "engine: transformers, model: rm").replace(
        "rule: best_vs_worst", "rule: pairwise_winners"), "pairs.rule", "needs annotate.method: judge_pairwise"),
    (GOOD + "pairs: {rule: best_vs_worst}\n", "pairs.rule", "needs scores"),
    (GOOD + "decontam: {benchmarks_root: /nonexistent}\n", "decontam.benchmarks_root", "not found"),
])
def test_stage_requirements_fail_before_work(recipe_dir, text, field, message):
    path = write(recipe_dir, text)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert f"{path}: " in str(err.value) and field in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("path", sorted((REPO / "data" / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_are_valid_and_their_inputs_exist(path):
    recipe = load_recipe(path)
    assert recipe.inputs and all(Path(i.path).exists() for i in recipe.inputs), recipe.inputs
    assert recipe.output.dataset


def raises(path, **kw) -> str:
    with pytest.raises(RecipeError) as err:
        load_recipe(path, **kw)
    return str(err.value)


def test_a_name_with_a_trailing_newline_is_rejected(recipe_dir):
    path = write(recipe_dir, GOOD.replace("dataset: demo", 'dataset: "ok\\n"'))
    message = raises(path)
    assert f"{path}: output.dataset: " in message and "invalid dataset name" in message
    for ref in ("ok\n", "ok@v1\n", "ok@v\u0661"):
        with pytest.raises(NameError_):
            parse_ref(ref)


@pytest.mark.parametrize("text, message", [
    (GOOD + "output:\n  dataset: other\n", "output: duplicate key on line 6 (first on line 4)"),
    (GOOD + "ingest:\n  shard_rows: 10\n  shard_rows: 20\n",
     "ingest.shard_rows: duplicate key on line 8 (first on line 7)"),
    (GOOD.replace("path: in.jsonl", "path: in.jsonl\n    path: other.jsonl"),
     "inputs.0.path: duplicate key on line 4 (first on line 3)"),
])
def test_duplicate_keys_at_any_depth_are_rejected(recipe_dir, text, message):
    path = write(recipe_dir, text)
    assert raises(path) == f"{path}: {message}"


def test_merge_keys_may_override(recipe_dir):
    recipe = load_recipe(write(recipe_dir, GOOD + "ingest: {<<: {shard_rows: 5}, shard_rows: 7}\n"))
    assert recipe.ingest.shard_rows == 7


@pytest.mark.parametrize("text, field, message", [
    (GOOD + "ingest:\n  shard_rows: true\n", "ingest.shard_rows", "Input should be a valid integer"),
    (GOOD + "ingest:\n  shard_rows: '10'\n", "ingest.shard_rows", "Input should be a valid integer"),
    (GOOD + "ingest:\n  shard_rows: 10.0\n", "ingest.shard_rows", "Input should be a valid integer"),
    (GOOD + "pairs:\n  tau: '0.5'\n", "pairs.tau", "Input should be a valid number"),
    (GOOD + "pairs:\n  tau: true\n", "pairs.tau", "Input should be a valid number"),
    (GOOD + "description: 3\n", "description", "Input should be a valid string"),
    (GOOD + "dedup:\n  exact: 'yes'\n", "dedup.exact", "Input should be a valid boolean"),
    (GOOD + "dedup:\n  response_columns: responses\n", "dedup.response_columns", "Input should be a valid list"),
])
def test_types_are_strict(recipe_dir, text, field, message):
    path = write(recipe_dir, text)
    assert f"{path}: {field}: {message}" in raises(path)


def test_yaml_natural_values_still_load(recipe_dir):
    recipe = load_recipe(write(recipe_dir, GOOD.replace("- path: in.jsonl", "- {path: in.jsonl, format: prompt}")
                               + "ingest: {shard_rows: 10}\npairs: {tau: 2}\ndedup: {response_columns: [a]}\n"))
    assert (recipe.ingest.shard_rows, recipe.inputs[0].format, recipe.dedup.response_columns) == (10, "prompt", ["a"])
    assert recipe.pairs.tau == 2.0 and isinstance(recipe.pairs.tau, float)


JUDGED = GOOD + """
generate:
  models: [{name: m, model: some-model, engine: vllm}]
annotate:
  method: judge_pairwise
  models: {judge: {engine: vllm, model: j}}
  templates: {pairwise: prompts/pairwise.jinja}
pairs: {rule: pairwise_winners}
decontam: {cache_dir: cache}
"""


def test_every_path_is_relative_to_the_recipe_for_build_and_eval_annotator(recipe_dir, tmp_path, monkeypatch):
    path = write(recipe_dir, JUDGED)
    monkeypatch.chdir(tmp_path.parent)  # not the recipe's directory
    expected = f"{path}: annotate.templates.pairwise: no such file or directory: prompts/pairwise.jinja"
    assert raises(path) == expected
    with pytest.raises(RecipeError) as err:
        load_annotate_config(path)
    assert str(err.value) == expected
    (recipe_dir / "prompts").mkdir()
    (recipe_dir / "prompts" / "pairwise.jinja").write_text("{{ conversation | fence('conversation') }}")
    recipe = load_recipe(path)
    assert recipe.annotate.templates.pairwise == str((recipe_dir / "prompts" / "pairwise.jinja").resolve())
    assert recipe.decontam.cache_dir == str((recipe_dir / "cache").resolve())
    assert load_annotate_config(path) == recipe.annotate


def test_build_key_covers_the_bytes_of_every_file_the_recipe_names(recipe_dir):
    """Judge templates and gold files (gate, ensemble) are read by the build: changed in place at
    the same path, the build key changes; untouched, it does not."""
    from pipeline.build import build_key, input_manifest

    files = {"pairwise.jinja": "Which is better? {{ response_a }} {{ response_b }}",
             "gate.jsonl": '{"prompt": "q", "chosen": "a", "rejected": "b"}\n',
             "fit.jsonl": '{"prompt": "q", "chosen": "c", "rejected": "d"}\n'}
    for name, text in files.items():
        (recipe_dir / name).write_text(text)
    path = write(recipe_dir, GOOD + """
annotate:
  method: judge_pairwise
  models: {judge: {model: qwen2.5-coder-0.5b-instruct}}
  templates: {pairwise: pairwise.jinja}
  gate: {gold: gate.jsonl, min_accuracy: 0.5}
pairs: {rule: best_vs_worst}
generate: {include_source_responses: true}
""")

    def key() -> str:
        recipe = load_recipe(path)
        return build_key(recipe, input_manifest(recipe))

    before = key()
    assert key() == before
    seen = {before}
    for name in ("pairwise.jinja", "gate.jsonl"):
        (recipe_dir / name).write_text(files[name] + " ")
        seen.add(key())
    (recipe_dir / "fit.jsonl").write_text("")  # not named by this recipe
    seen.add(key())
    assert len(seen) == 3
    # the ensemble's gold files, listed
    path.write_text(path.read_text().replace("method: judge_pairwise", "method: ensemble").replace(
        "judge: {model: qwen2.5-coder-0.5b-instruct}",
        "strong: {model: qwen2.5-coder-0.5b-instruct}, weak: {model: gemma3-270m}").replace(
        "  gate:", "  ensemble: {gold: [fit.jsonl]}\n  gate:"))
    fitted = key()
    (recipe_dir / "fit.jsonl").write_text(files["fit.jsonl"] + " ")
    assert key() != fitted
