"""The data card (README.md), the HTML report, `prefpipe card` and `prefpipe datasets diff`, on
versions published by the real store from real hh-rlhf rows (tests/fixtures/card_versions.py)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.card import funnel_checks, render, write_card
from pipeline.cli import app
from pipeline.diff import diff_versions
from pipeline.ids import file_sha256
from pipeline.shards import ShardWriter
from pipeline.store import publish, read_manifest
from pipeline.tables import PAIR
from pipeline.version_stats import version_stats
from tests.fixtures.card_versions import XSS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def front_matter(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n", 2)[1])


def stated_rows(readme: str) -> int:
    return int(re.search(r"This version holds \*\*(\d+)\*\* pairs", readme).group(1))


def stated_funnel(readme: str) -> list[dict]:
    """The funnel table as the card prints it."""
    section = readme.split("## Funnel", 1)[1].split("\n\n")[1]
    rows = []
    for line in section.splitlines()[2:]:
        stage, rin, rout, dropped, written, reasons = [c.strip() for c in line.strip("|").split("|")]
        parsed = {} if reasons == "-" else {k: int(v) for k, v in (r.split(": ") for r in reasons.split(", "))}
        rows.append({"stage": stage, "rows_in": int(rin), "rows_out": int(rout), "rows_dropped": int(dropped),
                     "outputs_written": int(written), "reasons": parsed})
    return rows


def parquet_rows(version_dir: Path, sub: str) -> list[dict]:
    return [r for p in sorted((version_dir / sub).glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def report_pngs(html_text: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html_text)]


@pytest.mark.parametrize("ref", ["hh@v1", "hh@v2", "clean@v1"])
def test_card_yaml_parses_and_load_dataset_returns_the_stated_rows(card_versions, ref, tmp_path):
    import datasets

    version = card_versions[ref]
    readme = (version / "README.md").read_text()
    meta = front_matter(readme)
    assert meta["license"] == "mit"
    assert meta["task_categories"] == ["text-generation"]
    assert meta["configs"][0]["data_files"][0]["path"] == "data/*.parquet"
    n = stated_rows(readme)
    assert n == len(parquet_rows(version, "data")) > 0
    assert meta["size_categories"] == ["n<1K"]
    ds = datasets.load_dataset(str(version), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == n
    assert {"prompt", "chosen", "rejected", "score_chosen", "margin", "pair_id"} <= set(ds.column_names)
    assert ds[0]["chosen"][-1]["role"] == "assistant"


@pytest.mark.parametrize("ref", ["hh@v1", "hh@v2", "clean@v1", "alldropped@v1"])
def test_every_number_in_the_funnel_adds_up(card_versions, ref):
    version = card_versions[ref]
    readme = (version / "README.md").read_text()
    funnel = stated_funnel(readme)
    assert [s["stage"] for s in funnel] == ["ingest", "pairs"]
    for s in funnel:
        assert s["rows_in"] == s["rows_out"] + s["rows_dropped"]
        assert sum(s["reasons"].values()) == s["rows_dropped"]
    assert funnel[1]["rows_in"] == funnel[0]["outputs_written"]
    assert funnel[-1]["outputs_written"] == stated_rows(readme) == len(parquet_rows(version, "data"))
    dropped = parquet_rows(version, "dropped")
    assert sum(s["rows_dropped"] for s in funnel) == len(dropped)
    by_reason = {}
    for d in dropped:
        by_reason[(d["stage"], d["reason"])] = by_reason.get((d["stage"], d["reason"]), 0) + 1
    assert by_reason == {(s["stage"], r): n for s in funnel for r, n in s["reasons"].items()}
    assert f"**{len(dropped)}** rows were dropped" in readme
    assert "Every count adds up" in readme
    assert funnel[0]["rows_in"] == {"hh@v1": 15, "hh@v2": 20, "clean@v1": 6, "alldropped@v1": 3}[ref]


def test_funnel_checks_flag_counts_that_do_not_add_up(card_versions):
    version = card_versions["hh@v1"]
    manifest = read_manifest(version)
    stats = version_stats(version)
    assert funnel_checks(manifest, stats) == []
    broken = json.loads(json.dumps(manifest))
    broken["funnel"][0]["rows_out"] += 1
    broken["funnel"][1]["reasons"] = {"identical_responses": 2}
    problems = funnel_checks(broken, stats)
    assert any("ingest: rows in 15 != rows out 15 + dropped 1" in p for p in problems)
    assert any("pairs/identical_responses: funnel says 2 dropped, dropped/ holds 0" in p for p in problems)
    assert "The counts do not add up" in render(version, broken)["README.md"]
    incremental = {**manifest, "incremental": {"parent_rows_carried": 5, "rows_added": 14}}
    assert funnel_checks(incremental, stats) == ["last stage wrote 14 rows (+ 5 carried from the parent), "
                                                 "data/ holds 14"]


def test_text_from_data_is_escaped_in_the_report_and_the_card(card_versions):
    version = card_versions["hh@v1"]
    assert any(XSS in m["content"] for r in parquet_rows(version, "data") for m in r["chosen"])
    report = (version / "report.html").read_text()
    readme = (version / "README.md").read_text()
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert report.count(escaped) >= 2  # the description and the sampled response
    assert "<script" not in report.lower()
    # in Markdown, raw HTML is only inert inside code blocks (the recipe YAML quotes the description)
    prose = re.sub(r"(`{3,})[a-z]*\n.*?\n\1", "", readme, flags=re.S)
    assert "<script" not in prose.lower() and escaped in prose


@pytest.mark.parametrize("ref,rows,dropped", [("clean@v1", 6, 0), ("alldropped@v1", 0, 3)])
def test_plots_render_with_no_drops_and_with_every_row_dropped(card_versions, ref, rows, dropped):
    version = card_versions[ref]
    manifest = read_manifest(version)
    assert (manifest["rows"], manifest["rows_dropped"]) == (rows, dropped)
    assert len(list((version / "data").glob("*.parquet"))) == (0 if rows == 0 else 1)
    pngs = report_pngs((version / "report.html").read_text())
    assert len(pngs) == 5
    for data in pngs:
        assert data.startswith(PNG_SIGNATURE)
        height, width, _ = matplotlib.image.imread(io.BytesIO(data), format="png").shape
        assert height > 100 and width > 300
    readme = (version / "README.md").read_text()
    assert stated_rows(readme) == rows
    assert ("No rows were dropped." in readme) == (dropped == 0)
    assert ("No pairs in this version." in readme) == (rows == 0)


@pytest.fixture(scope="module")
def scored_version(card_versions, tmp_path_factory):
    """A version as later stages will publish it: scored pairs with CHES metadata and the manifest
    sections of models, judge reliability, decontamination and dedup (pairs: real hh-rlhf rows)."""
    source = card_versions["hh@v1"]
    pairs = parquet_rows(source, "data")
    shard_dir = tmp_path_factory.mktemp("scored")
    with ShardWriter(shard_dir, PAIR) as w:
        for i, p in enumerate(pairs):
            score_c, score_r = 6.0 + (i % 4), 3.0 + (i % 3)
            w.write({**p, "score_chosen": score_c, "score_rejected": score_r, "margin": score_c - score_r,
                     "chosen_model": "gen<b>A</b>", "metadata": json.dumps({"ches": 0.1 * i})})
    manifest = {k: v for k, v in read_manifest(source).items()
                if k in ("recipe", "recipe_hash", "build_key", "inputs", "code_version", "schema_version",
                         "funnel", "command")}
    manifest |= {
        "models": {"generators": ["gen<b>A</b>", "gen-B"], "judge": "qwen2.5-0.5b",
                   "density_ratio": {"strong": "strong-m", "weak": "weak-m"}, "ches_model": "ches-m"},
        "judge_reliability": {"flip_rate": 0.125, "first_position_win_rate": 0.6,
                              "longer_response_win_rate": 0.7, "eval_annotator": {"agreement": 0.8}},
        "decontamination": {"benchmarks": {"gsm8k": {"items_hit": 3, "rows": ["a", "b"]},
                                           "mmlu": {"items_hit": 0, "rows": []}}},
        "dedup": {"exact": 2, "near": 1, "semantic": 0},
        "ches": {"threshold": 0.9, "fraction": 0.1},
        "warnings": ["judge <i>flip</i> rate above 0.1"],
    }
    dropped = sorted((source / "dropped").glob("*.parquet"))
    return publish(tmp_path_factory.mktemp("scored-root"), "scored", w.paths, dropped, manifest,
                   write_card=write_card)


def test_card_renders_the_sections_later_stages_record(scored_version):
    readme = (scored_version / "README.md").read_text()
    report = (scored_version / "report.html").read_text()
    assert "| judge | qwen2.5-0.5b |" in readme
    assert "| density ratio (strong / weak) | strong-m / weak-m |" in readme
    assert "gen&lt;b&gt;A&lt;/b&gt;" in readme and "<b>A</b>" not in readme and "<b>A</b>" not in report
    assert "| gsm8k | 3 | 2 |" in readme and "| exact | 2 |" in readme
    assert "| flip_rate | 0.125 |" in readme
    assert "CHES cut: threshold 0.9, fraction 0.1." in readme
    n = stated_rows(readme)
    margins = [r["margin"] for r in parquet_rows(scored_version, "data")]
    margin_row = re.search(r"\| margin \| (\d+) \| 0 \| ([\d.]+) \|", readme)
    assert int(margin_row.group(1)) == n == len(margins)
    assert float(margin_row.group(2)) == pytest.approx(sum(margins) / len(margins), rel=1e-3)
    assert re.search(r"\| ches \| %d \| 0 \|" % n, readme)
    assert "judge &lt;i&gt;flip&lt;/i&gt; rate above 0.1" in report
    assert "not recorded" not in readme.split("## Models")[1].split("## Funnel")[0]


def test_absent_sections_say_not_recorded(card_versions):
    readme = (card_versions["hh@v2"] / "README.md").read_text()
    for section in ("Decontamination", "Deduplication", "Judge reliability"):
        assert readme.split(f"## {section}\n\n", 1)[1].startswith("Not recorded.")
    assert "| judge | not recorded |" in readme


def _snapshot(version: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(version)): (p.read_bytes(), p.stat().st_mode & 0o777)
            for p in sorted(version.rglob("*")) if p.is_file()}


def test_prefpipe_card_is_idempotent_and_leaves_the_data_alone(card_versions):
    version, root = card_versions["hh@v2"], card_versions["root"]
    before = _snapshot(version)
    cmd = [sys.executable, "-m", "pipeline.cli", "card", "hh@v2", "--data-root", str(root)]
    first = subprocess.run(cmd, capture_output=True, text=True, env=os.environ, check=True)
    assert "unchanged" in first.stdout and "rewrote" not in first.stdout  # publish wrote the same bytes
    subprocess.run(cmd, capture_output=True, text=True, env=os.environ, check=True)
    assert _snapshot(version) == before
    manifest = read_manifest(version)
    for rel, f in manifest["files"].items():
        assert file_sha256(version / rel) == f["sha256"]

    readme = version / "README.md"
    readme.chmod(0o644)
    readme.write_text("stale card")
    result = CliRunner().invoke(app, ["card", "hh@v2", "--data-root", str(root)])
    assert result.exit_code == 0, result.output
    assert f"rewrote {readme}" in result.output.replace("\n", "")
    assert _snapshot(version) == before
    assert not [p for p in version.iterdir() if p.name.startswith(".")]  # no temp files left


def test_prefpipe_card_rejects_a_missing_version(card_versions):
    result = CliRunner().invoke(app, ["card", "hh@v9", "--data-root", str(card_versions["root"])])
    assert result.exit_code == 1 and "no version v0009" in result.output


def test_diff_counts_pairs_added_and_removed(card_versions):
    a, b = card_versions["hh@v1"], card_versions["hh@v2"]
    ids_a = {r["pair_id"] for r in parquet_rows(a, "data")}
    ids_b = {r["pair_id"] for r in parquet_rows(b, "data")}
    diff = diff_versions(a, b)
    # v1 = rows 0..13 (+1 malformed), v2 = rows 4..23: rows 0-3 removed, 14-23 added
    assert (diff["removed"], diff["added"], diff["unchanged"]) == (4, 10, 10)
    assert (len(ids_a - ids_b), len(ids_b - ids_a)) == (4, 10)
    assert diff["rows"] == {"a": 14, "b": 20}
    ingest = diff["funnel"][0]
    assert ingest["stage"] == "ingest" and ingest["rows_dropped"] == {"a": 1, "b": 0}
    assert ingest["reasons"] == {"bad_transcript": {"a": 1, "b": 0}}
    assert diff["distributions"]["chosen_chars"]["b"]["count"] == 20
    assert diff_versions(b, b)["added"] == diff_versions(b, b)["removed"] == 0

    readme = (b / "README.md").read_text()
    assert "Compared with hh@v0001: **10** pairs added, **4** removed, 10 unchanged" in readme
    assert "No parent version" in (a / "report.html").read_text()

    result = CliRunner().invoke(app, ["datasets", "diff", "hh@v1", "hh@v2", "--json",
                                      "--data-root", str(card_versions["root"])])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["added"] == 10
