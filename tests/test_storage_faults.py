"""Publishing onto a read-only or full file system: a clear error, earlier versions untouched,
no partial version visible, temporary files cleaned up.

As root (CI) the faults are real file systems: a small tmpfs, remounted read-only or filled up.
Without mount rights they fall back to a read-only directory and a file-size limit (RLIMIT_FSIZE).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.publish.store import list_versions, publish, read_manifest
from pipeline.tables import PAIR


def shard(path: Path, n: int, text_size: int = 10) -> Path:
    rows = [{"pair_id": f"p{i}", "prompt": [{"role": "user", "content": os.urandom(text_size).hex()}]}
            for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows, schema=PAIR), path, compression="none")
    return path


def can_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    probe = Path(f"/tmp/prefpipe-mount-probe-{uuid.uuid4().hex[:6]}")
    probe.mkdir()
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], check=True)
        return ok
    finally:
        probe.rmdir()


MOUNT = can_mount()


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB file system (tmpfs) when we may mount one, else a plain directory."""
    root = tmp_path / "fs"
    root.mkdir()
    if MOUNT:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(root)], check=True)
    yield root
    if MOUNT:
        subprocess.run(["umount", "-l", str(root)], check=True)


def visible(root: Path) -> tuple[list[int], list[str]]:
    ds = root / "datasets" / "ds"
    tmp = [p.name for p in ds.iterdir() if p.name.startswith(".tmp-")] if ds.exists() else []
    return list_versions(root, "ds"), tmp


def publish_in_subprocess(root: Path, src: Path, fsize_limit: int | None = None) -> subprocess.CompletedProcess:
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from pathlib import Path
        from pipeline.publish.store import StoreError, publish
        if {fsize_limit!r}:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize_limit!r}, {fsize_limit!r}))
        try:
            publish(Path({str(root)!r}), "ds", [Path({str(src)!r})], [], {{"funnel": []}})
        except StoreError as err:
            print(err, file=sys.stderr)
            sys.exit(1)
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_full_disk(small_fs, tmp_path):
    publish(small_fs, "ds", [shard(tmp_path / "small.parquet", 10)], [], {"funnel": []})
    before = read_manifest(small_fs / "datasets/ds/v0001")
    big = shard(tmp_path / "big.parquet", 3000, text_size=1024)  # ~6 MB: does not fit
    proc = publish_in_subprocess(small_fs, big, fsize_limit=None if MOUNT else 1 << 20)
    assert proc.returncode == 1, proc.stderr
    assert "cannot publish ds" in proc.stderr and "nothing was published" in proc.stderr
    versions, tmp = visible(small_fs)
    assert versions == [1] and tmp == []
    assert read_manifest(small_fs / "datasets/ds/v0001") == before


def test_read_only_target(small_fs, tmp_path):
    publish(small_fs, "ds", [shard(tmp_path / "small.parquet", 10)], [], {"funnel": []})
    if MOUNT:
        subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    else:
        (small_fs / "datasets/ds").chmod(0o555)
    try:
        proc = publish_in_subprocess(small_fs, shard(tmp_path / "more.parquet", 5))
    finally:
        if MOUNT:
            subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
        else:
            (small_fs / "datasets/ds").chmod(0o755)
    assert proc.returncode == 1
    assert "cannot publish ds" in proc.stderr
    assert visible(small_fs) == ([1], [])
