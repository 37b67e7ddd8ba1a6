"""benchmarks/gpu_check.sh on a machine without an NVIDIA GPU: one clear error line, nothing done."""

from __future__ import annotations

import shutil
import subprocess

from tests.helpers import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _run(path: str, tmp_path) -> subprocess.CompletedProcess:
    env = {"PATH": path, "HOME": str(tmp_path), "GPU_VENV": str(tmp_path / "venv"),
           "GPU_CHECK_WORK": str(tmp_path / "work")}
    return subprocess.run([shutil.which("bash"), str(SCRIPT)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)


def test_script_parses():
    assert subprocess.run([shutil.which("bash"), "-n", str(SCRIPT)]).returncode == 0


def test_no_nvidia_smi_fails_with_one_line(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = _run(str(empty), tmp_path)  # nothing on PATH: no nvidia-smi whatever this machine has
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "gpu_check: error: no NVIDIA GPU: nvidia-smi not found "
        "(run this on a machine with an NVIDIA GPU and its driver)"]
    assert not (tmp_path / "venv").exists() and not (tmp_path / "work").exists()


def test_nvidia_smi_without_a_gpu_fails_with_one_line(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"  # what nvidia-smi says with the driver installed but no GPU
    fake.write_text("#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    fake.chmod(0o755)
    proc = _run(str(bin_dir), tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "gpu_check: error: no NVIDIA GPU: nvidia-smi lists none (is the driver loaded?)"]
    assert not (tmp_path / "venv").exists() and not (tmp_path / "work").exists()


def test_a_listed_gpu_gets_past_the_check(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
    fake.chmod(0o755)
    env_path = f"{bin_dir}:/usr/bin:/bin"
    proc = subprocess.run([shutil.which("bash"), str(SCRIPT)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60,
                          env={"PATH": env_path, "HOME": str(tmp_path), "PYTHON": "no-such-python3.11",
                               "GPU_VENV": str(tmp_path / "venv"), "GPU_CHECK_WORK": str(tmp_path / "work")})
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "gpu_check: error: no-such-python3.11 not found (prefpipe needs Python 3.11; set PYTHON=...)"]
    assert not (tmp_path / "venv").exists() and not (tmp_path / "work").exists()
