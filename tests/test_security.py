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
