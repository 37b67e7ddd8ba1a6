"""The versioned store: atomic publication, distinct versions under concurrency, validated names."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.names import NameError_, check_dataset_name, parse_ref
from pipeline.publish.store import StoreError, list_versions, publish, read_manifest, version_path
from pipeline.tables import PAIR


def shard(tmp_path, n, name="in.parquet"):
    rows = [{"pair_id": f"p{i}", "conversation_id": f"c{i}",
             "prompt": [{"role": "user", "content": f"q{i}"}],
             "chosen": [{"role": "assistant", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}]} for i in range(n)]
    path = tmp_path / name
    pq.write_table(pa.Table.from_pylist(rows, schema=PAIR), path)
    return path


@pytest.mark.parametrize("name", ["a/b", "..", "../x", "/etc", "x\x00y", "", "a" * 200, "a..b"])
def test_names_that_escape_the_root_are_rejected(name, tmp_path):
    with pytest.raises(NameError_):
        check_dataset_name(name)
    with pytest.raises((NameError_, StoreError)):
        publish(tmp_path, name, [], [], {})
    assert not any(tmp_path.rglob("*x*"))


def test_refs_parse():
    assert parse_ref("ds@v3") == ("ds", 3)
    assert parse_ref("ds@v0003") == ("ds", 3)
    assert parse_ref("ds") == ("ds", None)
    with pytest.raises(NameError_):
        parse_ref("ds@latest/../x")


def test_publish_is_complete_and_read_only(tmp_path):
    root = tmp_path / "root"
    v1 = publish(root, "ds", [shard(tmp_path, 5)], [], {"funnel": []})
    v2 = publish(root, "ds", [shard(tmp_path, 7)], [], {"funnel": []})
    assert list_versions(root, "ds") == [1, 2]
    assert read_manifest(v2)["parent_version"] == "v0001"
    assert read_manifest(v1)["rows"] == 5 and read_manifest(v2)["rows"] == 7
    assert version_path(root, "ds") == v2 and version_path(root, "ds@v1") == v1
    data = v1 / "data" / "part-00000.parquet"
    assert not os.access(data, os.W_OK) or os.geteuid() == 0
    assert oct(data.stat().st_mode & 0o777) == "0o444"
    manifest = read_manifest(v1)
    assert manifest["files"]["data/part-00000.parquet"]["rows"] == 5


def test_concurrent_publishes_get_distinct_versions(tmp_path):
    root = tmp_path / "root"
    src = shard(tmp_path, 3)
    script = textwrap.dedent(f"""
        from pathlib import Path
        from pipeline.publish.store import publish
        for _ in range(5):
            publish(Path({str(root)!r}), "ds", [Path({str(src)!r})], [], {{"funnel": []}})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert list_versions(root, "ds") == list(range(1, 16))
    for v in range(1, 16):
        m = read_manifest(root / "datasets/ds" / f"v{v:04d}")
        assert m["version"] == f"v{v:04d}" and m["rows"] == 3


def test_killed_publish_leaves_no_visible_version(tmp_path):
    root = tmp_path / "root"
    src = shard(tmp_path, 3)
    marker = tmp_path / "in-publish"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from pipeline.publish.store import publish
        def card(tmp_dir, manifest):
            Path({str(marker)!r}).write_text(str(tmp_dir))
            time.sleep(120)
        publish(Path({str(root)!r}), "ds", [Path({str(src)!r})], [], {{"funnel": []}}, write_card=card)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert marker.exists()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ds = root / "datasets/ds"
    assert list_versions(root, "ds") == []
    leftovers = [p.name for p in ds.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers  # the half-built version is only in a hidden temporary directory
    publish(root, "ds", [src], [], {"funnel": []})
    assert list_versions(root, "ds") == [1]
    assert not [p for p in ds.iterdir() if p.name.startswith(".tmp-")]  # stale tmp cleaned


def test_manifest_is_json_and_names_every_file(tmp_path):
    root = tmp_path / "root"
    v = publish(root, "ds", [shard(tmp_path, 4)], [shard(tmp_path, 1, "d.parquet")], {"funnel": []})
    m = json.loads((v / "manifest.json").read_text())
    assert set(m["files"]) == {"data/part-00000.parquet", "dropped/dropped-00000.parquet"}
    assert m["rows"] == 4 and m["rows_dropped"] == 1


def test_identical_concurrent_build_publishes_once(tmp_path):
    from pipeline.publish.store import AlreadyPublished

    root = tmp_path / "root"
    src = shard(tmp_path, 3)
    first = publish(root, "ds", [src], [], {"funnel": [], "build_key": "b1"}, unless_build_key="b1")
    with pytest.raises(AlreadyPublished) as same:
        publish(root, "ds", [src], [], {"funnel": [], "build_key": "b1"}, unless_build_key="b1")
    assert same.value.path == first
    publish(root, "ds", [src], [], {"funnel": [], "build_key": "b1"})  # forced: a new version
    assert list_versions(root, "ds") == [1, 2]
    assert not [p for p in (root / "datasets/ds").iterdir() if p.name.startswith(".tmp-")]
