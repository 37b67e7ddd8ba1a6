"""Every failure a user can meet running `prefpipe build` ends with one line on stderr naming what
failed and what to do, exit code 1 (run) or 2 (usage/recipe), and no traceback unless --debug.

The faults are real: as root with mount rights (CI) a small tmpfs filled up or remounted read-only
(`small_fs`); without mount rights the disk-full case is skipped and the read-only case falls back
to a directory without write permission (as non-root) or a data root that is a regular file.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from filelock import FileLock

from tests.helpers import cli, free_port, hh_slice, write_recipe
from tests.test_storage_faults import MOUNT, small_fs  # noqa: F401 - the fixture


def one_line(proc: subprocess.CompletedProcess, code: int) -> str:
    """The only non-blank stderr line of a failed build, lower-cased; no traceback anywhere."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0].lower()


@pytest.fixture
def recipe(real_data, tmp_path):
    return write_recipe(tmp_path / "recipe.yaml", [hh_slice(real_data, tmp_path / "in/hh.jsonl", 200)], "ds")


def build(recipe, root, *options, env=None):
    return cli(*options, "build", str(recipe), "--data-root", str(root), env=env, check=False)


def test_recipe_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("inputs: [{path: missing.jsonl}]\noutput: {dataset: ds}\nfilters: {lenght: 3}\n")
    line = one_line(build(bad, tmp_path / "root"), 2)
    assert "bad.yaml: filters.lenght: unknown key" in line


def test_bad_input_file(tmp_path):
    broken = tmp_path / "broken-dataset"  # looks like a Hugging Face dataset directory, is not one
    broken.mkdir()
    (broken / "state.json").write_text("{not json")
    recipe = write_recipe(tmp_path / "recipe.yaml", [broken], "ds")
    line = one_line(build(recipe, tmp_path / "root"), 1)
    assert f"cannot read input {broken}".lower() in line and "fix or replace it" in line


def test_engine_down(tmp_path):
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"Name a colour, please ({i})."}) + "\n" for i in range(3)))
    options = {"timeout_s": 1.0, "backoff_s": 0.05, "max_backoff_s": 0.2, "max_attempts": 2, "retry_budget_s": 1.0}
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    (tmp_path / "never-loaded").mkdir()  # a model directory must exist; this one is never loaded
    judge = {"engine": "transformers", "model": str(tmp_path / "never-loaded")}
    recipe = write_recipe(
        tmp_path / "recipe.yaml", [src], "down",
        generate={"models": [{"name": "served", "model": "tiny", "engine": "http", "base_urls": [url], "k": 2,
                              "max_tokens": 8, "options": options}]},
        annotate={"method": "density_ratio", "models": {"strong": judge, "weak": judge},
                  "criteria": {"default": "Prefer short answers."}},
        pairs={"rule": "best_vs_worst"})
    line = one_line(build(recipe, tmp_path / "root"), 1)
    assert "gave up on /v1/chat/completions after 2 attempts" in line and "start the engine" in line


@pytest.mark.skipif(not MOUNT, reason="needs root and mount rights for a small tmpfs to fill")
def test_disk_full(recipe, small_fs):
    stat = os.statvfs(small_fs)
    (small_fs / "filler").write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 16384))
    line = one_line(build(recipe, small_fs), 1)
    assert f"disk full writing {small_fs}" in line and "free space and rerun" in line


def test_read_only_data_root(recipe, small_fs):
    if MOUNT:
        subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    elif os.geteuid() != 0:
        small_fs.chmod(0o555)
    else:
        pytest.skip("root without mount rights: permissions do not stop root (see the file-root test)")
    try:
        line = one_line(build(recipe, small_fs), 1)
    finally:
        if MOUNT:
            subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
        small_fs.chmod(0o755)
    assert f"data root {small_fs} is " in line and "choose another with --data-root" in line
    assert ("read-only" if MOUNT else "not writable") in line


def test_data_root_is_a_file(recipe, tmp_path):
    root = tmp_path / "root"
    root.write_text("not a directory")
    line = one_line(build(recipe, root), 1)
    assert f"data root {root} is not a directory tree" in line


def test_lock_held(recipe, tmp_path):
    """Another process holds the lock for starting the shared Prefect server past the timeout."""
    home = tmp_path / "prefect"
    lock = home / "prefpipe-server" / "start.lock"
    lock.parent.mkdir(parents=True)
    env = {"PREFECT_HOME": str(home), "PREFECT_API_URL": "", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "2"}
    with FileLock(str(lock)):
        line = one_line(build(recipe, tmp_path / "root", env=env), 1)
    assert f"({lock} is held)".lower() in line and "wait for it and rerun" in line


def test_debug_shows_the_traceback(recipe, tmp_path):
    root = tmp_path / "root"
    root.write_text("not a directory")
    proc = build(recipe, root, "--debug")
    assert proc.returncode == 1 and "Traceback (most recent call last)" in proc.stderr


@pytest.mark.parametrize("args, says", [
    (["build"], "missing argument 'recipe'"),
    (["build", "r.yaml", "--bogus"], "no such option: --bogus"),
    (["ingest", "r.yaml", "--out", "o", "--shard-rows", "many"], "invalid value for '--shard-rows'"),
    (["ingest", __file__, "--out", "o", "--format", "hhrlhf"], "--format: input should be"),
    (["datasets", "show", "ds@vx"], "invalid version 'vx'"),
])
def test_usage_errors_are_one_line(args, says, tmp_path):
    line = one_line(cli(*args, check=False), 2)
    assert says in line and "https://" not in line


def test_misspelled_names_get_a_suggestion(recipe, tmp_path):
    cli("build", str(recipe), "--data-root", str(tmp_path / "root"))
    assert "did you mean 'ds'" in one_line(cli("datasets", "show", "dss", "--data-root", str(tmp_path / "root"),
                                               check=False), 1)
    assert "did you mean 'gemma3-270m'" in one_line(cli("models", "prepare", "gemma3-27m", check=False), 2)
