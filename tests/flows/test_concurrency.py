"""Builds at once: two builds and a card regeneration on one dataset (distinct complete versions,
the existing version's data untouched, every file matching its manifest checksum), and eight
builds sharing one Prefect server (versions numbered without gaps)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from pipeline.ids import file_sha256
from pipeline.publish.store import list_versions, read_manifest, version_name
from tests.helpers import cli, cli_popen, hh_slice, write_recipe


def verify(version: Path) -> None:
    manifest = read_manifest(version)
    for rel, info in manifest["files"].items():
        assert file_sha256(version / rel) == info["sha256"], rel
    assert manifest["rows"] == sum(i["rows"] for r, i in manifest["files"].items() if r.startswith("data/"))


def test_two_builds_and_a_card_regeneration(real_data, tmp_path):
    root = tmp_path / "root"
    first = write_recipe(tmp_path / "r0.yaml", [hh_slice(real_data, tmp_path / "in0/hh.jsonl", 50)], "busy")
    cli("build", str(first), "--data-root", str(root))
    v1 = root / "datasets/busy/v0001"
    before = {p.name: p.read_bytes() for p in (v1 / "data").iterdir()}

    procs = [cli_popen("build", str(write_recipe(tmp_path / f"r{i}.yaml", [
        hh_slice(real_data, tmp_path / f"in{i}/hh.jsonl", 40 + i, start=100 * i)], "busy")), "--data-root", str(root))
        for i in (1, 2)]
    procs += [cli_popen("card", "busy@v1", "--data-root", str(root)) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outs

    assert list_versions(root, "busy") == [1, 2, 3]
    rows_in = sorted(read_manifest(root / f"datasets/busy/v000{v}")["funnel"][0]["rows_in"] for v in (2, 3))
    assert rows_in == [41, 42]
    for v in (1, 2, 3):
        verify(root / f"datasets/busy/v000{v}")
    assert {p.name: p.read_bytes() for p in (v1 / "data").iterdir()} == before
    assert (v1 / "README.md").read_text().startswith("---\n")
    assert not [p for p in (root / "datasets/busy").iterdir() if p.name.startswith(".tmp-")]


def test_eight_builds_at_once_share_one_prefect_server(real_data, tmp_path):
    """8 builds at once, none with PREFECT_API_URL, in a fresh PREFECT_HOME: they race to start
    the shared local Prefect server (one wins), all succeed, and every dataset's versions are
    1..n without gaps: `alpha` and `gamma` get one version per distinct recipe, `beta` (three
    identical builds) one version and two "unchanged" reports."""
    root = tmp_path / "root"
    home = tmp_path / "prefect"
    env = {"PREFECT_HOME": str(home), "PREFECT_API_URL": ""}
    slices = {"alpha": [(40, 0), (41, 100), (42, 200)], "beta": [(30, 300)] * 3, "gamma": [(43, 400), (44, 500)]}
    procs = []
    for name, specs in slices.items():
        for i, (n, start) in enumerate(specs):
            src = hh_slice(real_data, tmp_path / f"in-{name}-{n}" / "hh.jsonl", n, start=start)
            recipe = write_recipe(tmp_path / f"{name}-{i}.yaml", [src], name)
            procs.append((name, cli_popen("build", str(recipe), "--data-root", str(root), env=env)))
    try:
        outs = [(name, p.communicate(timeout=600)) for name, p in procs]
        assert [p.returncode for _, p in procs] == [0] * 8, outs
    finally:
        state = home / "prefpipe-server/state.json"
        recorded = json.loads(state.read_text())["pid"] if state.exists() else None
        servers = [int(p.name) for p in Path("/proc").glob("[0-9]*") if _is_server_of(p, home)]
        for pid in servers:
            os.kill(pid, signal.SIGTERM)
    assert servers == [recorded]

    for name, specs in slices.items():
        published = [o for n, (o, _) in outs if n == name and f"published {name}@" in o]
        unchanged = [o for n, (o, _) in outs if n == name and "unchanged: an identical build" in o]
        assert len(published) == len(set(specs)) and len(published) + len(unchanged) == len(specs), outs
        versions = list_versions(root, name)
        assert versions == list(range(1, len(published) + 1))
        rows_in = []
        for v in versions:
            verify(root / f"datasets/{name}/{version_name(v)}")
            rows_in.append(read_manifest(root / f"datasets/{name}/{version_name(v)}")["funnel"][0]["rows_in"])
        assert sorted(rows_in) == sorted(n for n, _ in set(specs))
        assert not [p for p in (root / "datasets" / name).iterdir() if p.name.startswith(".tmp-")]


def _is_server_of(proc: Path, home: Path) -> bool:
    """Whether /proc/PID is a shared Prefect server (`flows.server`) of PREFECT_HOME `home`."""
    try:
        return (b"flows.server" in (proc / "cmdline").read_bytes()
                and f"PREFECT_HOME={home}".encode() in (proc / "environ").read_bytes().split(b"\0"))
    except OSError:
        return False
