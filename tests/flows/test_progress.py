"""Progress the CLI's bars show: every stage after the first is announced with the number of rows
it will read (known from what the stages before it wrote), and finishes at the count it read,
including stages whose result came from the cache."""

from __future__ import annotations

from collections import defaultdict

from pipeline import progress
from pipeline.publish.store import read_manifest
from tests.helpers import hh_slice, write_recipe


class Recorder:
    def __init__(self):
        self.expected: dict[str, int | None] = {}
        self.advanced: dict[str, int] = defaultdict(int)
        self.finished: dict[str, int] = {}

    def advance(self, label, rows):
        self.advanced[label] += rows

    def expect(self, label, total):
        self.expected[label] = total

    def finish(self, label, rows):
        self.finished[label] = rows


def build_with_progress(recipe, root, **kwargs):
    from flows.build import build_dataset

    seen = Recorder()
    unsubscribe = progress.subscribe(seen)
    try:
        return build_dataset(str(recipe), str(root), **kwargs), seen
    finally:
        unsubscribe()


def test_every_stage_but_the_first_has_its_total_before_it_starts(real_data, tmp_path):
    inputs = [hh_slice(real_data, tmp_path / "a.jsonl", 30), hh_slice(real_data, tmp_path / "b.jsonl", 25, start=30)]
    recipe = write_recipe(tmp_path / "r.yaml", inputs, "progress", dedup={}, filters={"length": {"max_ratio": 1.5}})
    out, seen = build_with_progress(recipe, tmp_path / "root")
    funnel = read_manifest(out["version_dir"])["funnel"]
    assert [s["stage"] for s in funnel] == ["ingest", "dedup", "pairs", "length"]
    assert seen.expected["ingest"] is None  # nothing says how many rows the inputs hold
    for stage in funnel:
        assert seen.finished[stage["stage"]] == stage["rows_in"], stage
        assert seen.advanced[stage["stage"]] <= stage["rows_in"]
    for stage in funnel[1:]:
        assert seen.expected[stage["stage"]] == stage["rows_in"] > 0, stage

    # a rebuild answered from the stage cache still reports every stage, at the same counts
    again, reused = build_with_progress(recipe, tmp_path / "root", force=True)
    assert reused.expected == seen.expected and reused.finished == seen.finished
