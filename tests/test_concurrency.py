"""Two builds and a card regeneration at once on one dataset: distinct complete versions, the
existing version's data untouched, every file matching its manifest checksum."""

from __future__ import annotations

from pathlib import Path

from pipeline.ids import file_sha256
from pipeline.store import list_versions, read_manifest
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
