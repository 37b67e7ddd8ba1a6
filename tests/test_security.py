"""Security properties a reviewer checks first: nothing in the library hands text to a shell or an
interpreter, YAML is only ever loaded safely, and dataset names cannot escape the data root."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipeline.names import NameError_, parse_ref
from tests.helpers import cli

SOURCE = [p for d in ("pipeline", "flows") for p in (Path(__file__).resolve().parents[1] / d).rglob("*.py")]
BUILTINS = {"eval", "exec", "compile", "__import__"}  # called by bare name
MODULE_CALLS = {("os", "system"), ("os", "popen"), ("yaml", "load"), ("yaml", "unsafe_load"),
                ("yaml", "full_load"), ("yaml", "load_all"), ("pickle", "loads"), ("pickle", "load")}


def calls(tree: ast.AST):
    """(dotted name, node) of each call: `eval`, `os.system`, `obj.method`..."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                yield f.id, node
            elif isinstance(f, ast.Attribute):
                owner = f.value.id if isinstance(f.value, ast.Name) else "?"
                yield f"{owner}.{f.attr}", node


@pytest.mark.parametrize("path", SOURCE, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_no_shell_eval_or_unsafe_yaml(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for name, node in calls(tree):
        assert name not in BUILTINS, f"{path}:{node.lineno} calls {name}()"
        assert tuple(name.split(".", 1)) not in MODULE_CALLS, f"{path}:{node.lineno} calls {name}()"
        for kw in node.keywords:
            if kw.arg == "shell":
                assert isinstance(kw.value, ast.Constant) and kw.value.value is False, f"{path}:{node.lineno}"


@pytest.mark.parametrize("ref", ["../x", "a/b", "/abs", "x\x00y", "x@v1/../../y", "..@v1"])
def test_refs_that_escape_are_rejected(ref, tmp_path):
    with pytest.raises(NameError_):
        parse_ref(ref)
    if "\x00" not in ref:  # argv cannot carry NUL
        proc = cli("datasets", "show", ref, "--data-root", str(tmp_path), check=False)
        assert proc.returncode == 2 and "invalid" in proc.stderr


KEY = "sk-proj-" + "Zx81Qw4LmNb7Tr2Vc9Ks"  # what a user pastes by mistake
HTTP = """
inputs: [{path: in.jsonl}]
generate:
  models: [{name: m, engine: http, base_urls: ["http://127.0.0.1:9/v1"], api_key_env: GEN}]
annotate:
  method: judge_pairwise
  models: {judge: {engine: http, model: j, options: {base_urls: ["http://127.0.0.1:9/v1"], api_key_env: JUDGE}}}
pairs: {rule: pairwise_winners}
output: {dataset: demo}
"""
UNSET = "PREFPIPE_TEST_UNSET_KEY"


def http_recipe(d: Path, gen: str, judge: str = "PATH") -> Path:
    (d / "in.jsonl").write_text('{"prompt": "hi"}\n')
    path = d / "recipe.yaml"
    path.write_text(HTTP.replace("GEN", gen).replace("JUDGE", judge))
    return path


@pytest.mark.parametrize("value, message", [(UNSET, f"environment variable {UNSET} is not set"),
                                            (KEY, "looks like a key, not a variable name")])
def test_build_checks_api_key_env_before_any_work(tmp_path, monkeypatch, value, message):
    monkeypatch.delenv(UNSET, raising=False)
    path, root = http_recipe(tmp_path, value), tmp_path / "root"
    proc = cli("build", str(path), "--data-root", str(root), check=False)
    assert proc.returncode == 2
    assert f"{path}: generate.models.0.api_key_env: {message}" in proc.stderr
    assert KEY not in proc.stderr + proc.stdout
    assert not (root / "work").exists() and not root.exists()


@pytest.mark.parametrize("value", [KEY, "Bearer abc", "hf_" + "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF", "1PASSWORD",
                                   "a" + "0f3c9be4d27a815c6e0b94fd3a7215c8e9d0"])
def test_a_key_given_as_api_key_env_is_never_echoed(tmp_path, monkeypatch, value):
    from pipeline.recipe import RecipeError, load_annotate_config, load_recipe

    monkeypatch.setenv("GOOD_KEY_VAR", "the-secret-value")
    path = http_recipe(tmp_path, "GOOD_KEY_VAR", judge=value)
    for load in (load_recipe, load_annotate_config):
        for check_env in (True, False):  # a value that is a key is an error even when not checking the env
            with pytest.raises(RecipeError) as err:
                load(path, check_env=check_env)
            assert str(err.value) == (f"{path}: annotate.models.judge.options.api_key_env: looks like a key, "
                                      "not a variable name: put the key in an environment variable and give "
                                      "the variable's name here")


def test_api_key_env_is_checked_at_load_unless_told_not_to(tmp_path, monkeypatch):
    from pipeline.recipe import RecipeError, load_annotate_config, load_recipe

    monkeypatch.setenv("GOOD_KEY_VAR", "the-secret-value")
    monkeypatch.delenv(UNSET, raising=False)
    path = http_recipe(tmp_path, "GOOD_KEY_VAR", judge=UNSET)
    for load in (load_recipe, load_annotate_config):
        with pytest.raises(RecipeError) as err:
            load(path)
        assert str(err.value) == (f"{path}: annotate.models.judge.options.api_key_env: environment variable "
                                  f"{UNSET} is not set (it must hold the API key)")
        load(path, check_env=False)  # e.g. a recipe prepared here to run elsewhere
    monkeypatch.setenv(UNSET, "another-secret")
    recipe = load_recipe(path)
    assert "secret" not in recipe.model_dump_json()
