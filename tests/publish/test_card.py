"""The data card (README.md), the HTML report, `prefpipe card` and `prefpipe datasets diff`, on
versions published by the real store from real hh-rlhf rows (tests/fixtures/card_versions.py)."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.publish.card import content_warnings, funnel_checks, render, size_category, source_datasets
from pipeline.publish.paths import rebuild_command
from pipeline.cli import app
from pipeline.publish.diff import diff_versions
from pipeline.ids import file_sha256
from pipeline.publish.store import read_manifest
from pipeline.publish.version_stats import detect_language, version_stats
from tests.fixtures.card_versions import XSS, absolute_paths

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
    manifest = read_manifest(version)
    config = meta["configs"][0]["config_name"]
    assert re.fullmatch(rf"{manifest['name']}-{manifest['version']}-[0-9a-f]{{12}}", config)
    assert meta["language"] == ["en"] and meta["multilinguality"] == ["monolingual"]
    assert meta["source_datasets"] == ["Anthropic/hh-rlhf"] and meta["annotations_creators"] == ["found"]
    info = meta["dataset_info"]
    assert info["config_name"] == config and info["splits"] == [
        {"name": "train", "num_bytes": info["dataset_size"], "num_examples": n}]
    assert [f["name"] for f in info["features"]] == pq.read_schema(next((version / "data").glob("*.parquet"))).names
    ds = datasets.load_dataset(str(version), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == n
    assert {"prompt", "chosen", "rejected", "score_chosen", "margin", "pair_id"} <= set(ds.column_names)
    assert ds[0]["chosen"][-1]["role"] == "assistant"


LOAD_IN_TURN = """
import json, sys
import datasets
out = []
for path in sys.argv[1:]:
    ds = datasets.load_dataset(path, split="train")
    out.append({"path": path, "ids": sorted(ds["pair_id"]), "cache": ds.cache_files[0]["filename"]})
print(json.dumps(out))
"""


def load_in_turn(paths: list[Path], cache: Path) -> list[dict]:
    """`load_dataset(V)` for each path in turn, in a fresh process whose datasets cache is `cache`."""
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", LOAD_IN_TURN, *map(str, paths)], capture_output=True, text=True,
                          env=env, check=True, timeout=300)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_load_dataset_loads_exactly_the_version_asked_for_whatever_the_cache_holds(card_versions, tmp_path):
    """Two versions of two datasets (all four directories named v0001 or v0002), loaded in turn
    through the real datasets cache, twice: each load returns that version's own rows."""
    refs = ["hh@v1", "clean@v1", "hh@v2", "clean@v2"]
    paths = [card_versions[r] for r in refs]
    cache = tmp_path / "hf-cache"
    first, again = load_in_turn(paths, cache), load_in_turn(paths[::-1], cache)
    for run in (first, again):
        for got in run:
            assert got["ids"] == sorted(r["pair_id"] for r in parquet_rows(Path(got["path"]), "data")), got["path"]
    assert len({got["cache"] for got in first}) == 4  # one cache entry per version...
    assert {got["cache"] for got in again} == {got["cache"] for got in first}  # ...reused, never mixed up

    # the cause, reproduced against the same real cache: cards whose config is the same for every
    # version ("default", data/*.parquet) make the second v0001 come back with the first one's rows
    stale = []
    for ref in ("hh@v1", "clean@v1"):
        copy = tmp_path / "old-cards" / ref.split("@")[0] / "v0001"
        shutil.copytree(card_versions[ref] / "data", copy / "data")
        (copy / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                        "    path: data/*.parquet\n---\n")
        stale.append(copy)
    old_hh, old_clean = load_in_turn(stale, tmp_path / "old-cache")
    assert old_clean["ids"] == old_hh["ids"] != sorted(r["pair_id"] for r in parquet_rows(stale[1], "data"))


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
    report = (version / "report.html").read_text()
    # plots with something to show; no scores, CHES or decontamination: one line each, no empty panel
    assert re.findall(r'data-plot="(\w+)"', report) == (["funnel", "lengths"] if rows else ["funnel"])
    pngs = report_pngs(report)
    assert len(pngs) == (2 if rows else 1)
    for data in pngs:
        assert data.startswith(PNG_SIGNATURE)
        height, width, _ = matplotlib.image.imread(io.BytesIO(data), format="png").shape
        assert height > 100 and width > 300
    readme = (version / "README.md").read_text()
    assert stated_rows(readme) == rows
    assert ("No rows were dropped." in readme) == (dropped == 0)
    assert ("No pairs in this version." in readme) == (rows == 0)


def test_card_renders_the_sections_later_stages_record(scored_version):
    readme = (scored_version / "README.md").read_text()
    report = (scored_version / "report.html").read_text()
    assert "| judge | qwen2.5-0.5b |" in readme
    assert "| density ratio (strong / weak) | strong-m / weak-m |" in readme
    assert "| generators | gen&lt;b&gt;A&lt;/b&gt; (model gen-a-model, vllm engine, 4 samples per prompt), " \
           "gen-B (http engine, 2 samples per prompt) |" in readme
    assert "| annotation method | density_ratio |" in readme
    assert "gen&lt;b&gt;A&lt;/b&gt;" in readme and "<b>A</b>" not in readme and "<b>A</b>" not in report
    for text in (readme, report):  # no Python dicts printed for the models (or anything else)
        assert not re.search(r"\{'|\{&#39;|'\w+': ", text)
    assert "| gsm8k | 3 | 2 |" in readme and "| exact | 2 |" in readme
    assert "| mmlu |" not in readme and "No hits in the other 21 benchmarks checked." in readme
    assert "| flip_rate | 0.125 |" in readme and "| eval_annotator.agreement | 0.8 |" in readme
    cut = ("The CHES filter (model ches-m) ranked pairs by ches_normalized and dropped the 15% of the build's "
           "pairs with the highest ches_normalized: 2 pairs dropped. Every pair with ches_normalized at or "
           "above 1.2 was dropped.")
    assert cut in readme and cut in html.unescape(report)
    n = stated_rows(readme)
    margins = [r["margin"] for r in parquet_rows(scored_version, "data")]
    margin_row = re.search(r"\| margin \| (\d+) \| 0 \| ([\d.]+) \|", readme)
    assert int(margin_row.group(1)) == n == len(margins)
    assert float(margin_row.group(2)) == pytest.approx(sum(margins) / len(margins), rel=1e-3)
    # the CHES table is the score the filter cut on (ches_normalized), kept and dropped
    assert re.search(r"\| ches_normalized \| %d \| 0 \| 0.55 \|" % n, readme)
    assert re.search(r"\| ches_normalized \(dropped\) \| 2 \| 0 \| 1.25 \|", readme)
    stats = version_stats(scored_version)  # what the report's CHES plot draws: the cut-on form, not raw `ches`
    assert stats["ches_score"] == "ches_normalized"
    assert max(stats["ches_values"]["kept"]) == pytest.approx(1.1)
    assert min(stats["ches_values"]["dropped"]) == pytest.approx(1.2)
    assert "judge &lt;i&gt;flip&lt;/i&gt; rate above 0.1" in report
    assert "not recorded" not in readme.split("## Models")[1].split("## Funnel")[0]
    assert "6.123456" not in readme and "| score_chosen | 12 | 0 | 7.623 |" in readme  # rounded
    agreement = readme.split("#### Agreement with human labels\n\n")[1].split("\n")[0]
    assert agreement == ("The annotator `cdr(strong-m/weak-m)` agreed with human labels on 73.0% of the gold "
                         "pairs (95% CI 66.0% to 79.0%); Cohen's kappa 0.41; over 200 pairs of `autoj_gold.jsonl.gz`.")
    bias = readme.split("## Bias, Risks, and Limitations\n\n")[1].split("\n\n")[0]
    assert "- Position bias: the judge preferred the response shown first in 60.0% of its verdicts and " \
           "changed its verdict in 12.5% of the pairs when the order was swapped" in bias
    assert "- Self-preference: strong model 'strong-m' also generated candidates (self-preference bias)" in bias
    assert "- Length bias: the chosen response is the longer one in" in bias


def test_gold_agreement_says_not_measured_when_no_evaluation_was_recorded(scored_version):
    manifest = read_manifest(scored_version)
    del manifest["annotator_eval"]

    def agreement(m: dict) -> str:
        return render(scored_version, m)["README.md"].split("#### Agreement with human labels\n\n")[1]

    assert agreement(manifest).startswith("Not applicable: the pairs keep the source's own labels")
    annotated = {**manifest, "recipe": {**manifest["recipe"], "annotate": {"method": "density_ratio"}}}
    assert agreement(annotated).startswith("Not measured for this build.")


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


HUB_SIZE_CATEGORIES = {"n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B",
                       "1B<n<10B", "10B<n<100B", "100B<n<1T", "n>1T"}


def test_size_categories_are_only_the_hubs_values():
    cases = {0: "n<1K", 999: "n<1K", 1_000: "1K<n<10K", 9_999_999: "1M<n<10M", 10_000_000: "10M<n<100M",
             2 * 10 ** 9: "1B<n<10B", 10 ** 12: "n>1T"}
    assert {n: size_category(n) for n in cases} == cases
    assert {size_category(10 ** k) for k in range(15)} <= HUB_SIZE_CATEGORIES


def test_language_detection_by_script_and_stopwords():
    texts = {"How do I bake a cake for my kids?": "en", "Comment faire un gâteau pour les enfants ?": "fr",
             "Wie kann ich das machen, und was ist das?": "de", "¿Cómo se hace una tarta de la abuela?": "es",
             "如何制作蛋糕": "zh", "ケーキの作り方を教えて": "ja", "Как испечь торт?": "ru", "12345 + 678": None}
    assert {t: detect_language(t) for t in texts} == texts


def test_card_states_content_warnings_and_citations_of_known_sources(card_versions, scored_version):
    for version in (card_versions["hh@v1"], card_versions["clean@v1"], scored_version):
        readme, report = (version / "README.md").read_text(), (version / "report.html").read_text()
        assert "> **Content warning:** input hh-rlhf_harmless-base_test." in readme
        assert "offensive, abusive, violent" in readme and "Content warning:</b> input" in report
        assert "@article{bai2022training," in readme.split("## Citation")[1]
        assert "its harmful content is there so models learn to refuse it" in readme
    manifest = read_manifest(card_versions["clean@v1"])
    self_instruct = {**manifest, "inputs": [{**manifest["inputs"][0], "path": "/x/self-instruct-20.jsonl"}]}
    assert content_warnings(self_instruct) == []
    assert source_datasets(self_instruct) == ["yizhongw/self_instruct"]
    assert source_datasets({**manifest, "inputs": [{**manifest["inputs"][0], "path": "/x/mine.jsonl"}]}) == ["original"]
    flagged = {**self_instruct, "recipe": {**manifest["recipe"],
                                           "description": "Red-team prompts. Content warning: slurs and threats."}}
    assert content_warnings(flagged) == ["the recipe says: slurs and threats."]
    readme = render(card_versions["clean@v1"], flagged)["README.md"]
    assert "> **Content warning:** the recipe says: slurs and threats." in readme
    assert "wang2023selfinstruct" in readme and "bai2022training" not in readme


@pytest.mark.parametrize("ref", ["hh@v1", "hh@v2", "clean@v1", "alldropped@v1", "scored"])
def test_no_absolute_local_path_in_the_card_or_the_report(card_versions, scored_version, real_data, ref):
    version = scored_version if ref == "scored" else card_versions[ref]
    manifest = read_manifest(version)
    texts = [p for p in version.rglob("*") if p.suffix in (".md", ".html", ".json", ".yaml")]
    assert {"README.md", "report.html", "manifest.json"} <= {p.name for p in texts}
    for name in texts:
        text = name.read_text()
        for local in (card_versions["root"], card_versions["work"], version.parents[2], real_data):
            assert str(local) not in text, (name, local)
        assert absolute_paths(text) == [], name
    readme = (version / "README.md").read_text()
    command = re.search(r"```sh\n(.*)\n```", readme).group(1)
    assert command == manifest["command"] == f"prefpipe build {manifest['recipe_path']} --data-root ."
    recipe_file = version.parents[2] / manifest["recipe_path"]  # relative to the data root, and there
    assert not os.path.isabs(manifest["recipe_path"]) and recipe_file.resolve().is_file()
    recipe = yaml.safe_load(readme.split("relative to its directory:\n\n```yaml\n")[1].split("\n```")[0])
    assert recipe["inputs"][0]["path"] == manifest["inputs"][0]["path"] == Path(manifest["inputs"][0]["path"]).name
    assert (recipe_file.parent / recipe["inputs"][0]["path"]).is_file()  # relative to the recipe's directory


def test_rebuild_command_never_names_an_absolute_path(card_versions):
    root = card_versions["root"]
    recipe = card_versions["work"] / "r.yaml"
    typed = {  # command as typed -> (recipe_path recorded, where to run it, command in the card)
        f"prefpipe build {recipe} --data-root {root}": (str(recipe), "from the data root",
                                                         f"prefpipe build {os.path.relpath(recipe, root)} --data-root ."),
        f"prefpipe build {recipe} --force": (str(recipe), "from the data root",
                                             f"prefpipe build {os.path.relpath(recipe, root)} --force --data-root ."),
        f"prefpipe build data/recipes/r.yaml --data-root={root}": (
            "data/recipes/r.yaml", "from the directory the build ran in",
            "prefpipe build data/recipes/r.yaml --data-root=DATA_ROOT"),
        "prefpipe build data/recipes/r.yaml": ("data/recipes/r.yaml", "from the directory the build ran in",
                                               "prefpipe build data/recipes/r.yaml"),
    }
    for command, (recipe_path, where, expected) in typed.items():
        got_where, got = rebuild_command(command, recipe_path, root)
        assert got == expected and got_where.startswith(where), command
