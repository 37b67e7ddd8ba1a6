"""`prefpipe review`: seeded stratified sampling, the agreement maths (accuracy, Cohen's kappa
against scikit-learn, bootstrap CIs, the version-weighted accuracy), durable append-only labels that survive a
kill, several reviewers, the gold export read back by eval-annotator's reader, the card's audit
line and the CLI's one-line errors. The review server is exercised over real HTTP (uvicorn on
127.0.0.1); the browser test is tests/test_review_browser.py.

The version under review is published through the real store from a handcrafted pairs table
(tables.PAIR): no model, well under a second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest

from pipeline.annotate.baselines import trivial_verdicts
from pipeline.annotate.eval import metrics
from pipeline.annotate.gold import load_gold
from pipeline.publish.store import publish, read_manifest
from pipeline.recipe import parse_recipe
from pipeline.review.agreement import (Judged, a_is_chosen, consensus, direction_agreement, oriented,
                                       reviewer_agreement, weighted_accuracy)
from pipeline.review.audit import audit_sentence, headline, human_audit
from pipeline.review.records import Label, LabelLog, ReviewError, Undo, active_labels, read_records, reviews_dir
from pipeline.review.sample import draw, left_side, stratify
from pipeline.review.server import ReviewSession
from pipeline.shards import ShardWriter
from pipeline.tables import PAIR
from tests.helpers import REPO, cli, free_port

XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
SOURCES = ("alpha.jsonl", "beta.jsonl")


def _pair(i: int) -> dict:
    """Pair i of the handcrafted version: every 5th prompt multi-turn, every 7th a small normalised
    margin, pair 3 a judge flip, every 9th length-borderline (ratio 3.5 of the guard's 4), every
    11th unscored, pair 4 carries an XSS payload."""
    prompt = [{"role": "user", "content": f"Question {i}: how do I do thing {i}?"}]
    if i % 5 == 0:
        prompt = [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": f"First turn {i}"},
                  {"role": "assistant", "content": f"Earlier answer {i}"},
                  {"role": "user", "content": f"Follow-up question {i}?"}]
    chosen, rejected = f"Chosen answer number {i}, helpful and right.", f"Rejected answer {i}, wrong."
    if i % 9 == 0:
        rejected = "x" * 20
        chosen = "y" * 70
    if i == 4:
        chosen = f"Here is code: {XSS} done."
    meta = {"margin_normalized": 0.05 if i % 7 == 0 else 0.5, "length_chosen": len(chosen),
            "length_rejected": len(rejected)}
    if i == 3:
        meta |= {"verdict_ab": "a", "verdict_ba": "b"}
    scored = i % 11 != 10
    margin = 0.1 * (i + 1) if scored else None
    return {"pair_id": f"pair-{i:03d}", "conversation_id": f"conv-{i:03d}", "prompt": prompt,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "score_chosen": 1.0 + margin if scored else None, "score_rejected": 1.0 if scored else None,
            "score_margin": margin, "margin": 0.2, "chosen_model": "m-a", "rejected_model": "m-b",
            "chosen_origin": "on_policy", "rejected_origin": "on_policy", "annotator": "cdr(a/b)",
            "pair_rule": "best_vs_worst", "source": SOURCES[i % 2], "source_row": i,
            "metadata": json.dumps(meta)}


def publish_review_version(root: Path, name: str = "rev", n: int = 40) -> Path:
    """Publish `n` handcrafted pairs as NAME@v0001 through the real store, with its data card."""
    from pipeline.keys import code_version
    from pipeline.publish.card import write_card
    from pipeline.tables import SCHEMA_VERSION

    work = root.parent / f"{name}-work"
    work.mkdir(parents=True, exist_ok=True)
    src = work / "pairs.jsonl"
    src.write_text("{}\n")
    recipe = parse_recipe({"inputs": [{"path": src.name, "license": "MIT"}],
                           "output": {"dataset": name, "license": "mit"},
                           "filters": {"length": {"max_ratio": 4.0}}}, base_dir=work)
    with ShardWriter(work / "shards", PAIR, shard_rows=15) as w:
        for i in range(n):
            w.write(_pair(i))
    manifest = {"recipe": recipe.resolved(), "recipe_path": str(work / "recipe.yaml"), "recipe_hash": recipe.hash(),
                "build_key": "b-test", "inputs": [], "code_version": code_version(), "schema_version": SCHEMA_VERSION,
                "command": f"prefpipe build recipe.yaml --data-root {root}",
                "funnel": [{"stage": "pairs", "rows_in": n, "rows_out": n, "rows_dropped": 0, "outputs_written": n,
                            "reasons": {}}]}
    return publish(root, name, w.paths, [], manifest, write_card=write_card)


@pytest.fixture
def version(tmp_path) -> Path:
    return publish_review_version(tmp_path / "data")


def label(version: Path, reviewer: str, pair_id: str, choice: str, left: str = "chosen") -> Label:
    return Label(reviewer=reviewer, dataset=version.parent.name, version=version.name, pair_id=pair_id,
                 left=left, label=choice, seed=0, stratum="s")


def write_labels(version: Path, reviewer: str, choices: dict[str, str]) -> None:
    """Labels in the pair's own terms (chosen | rejected | tie | skip), through the real log."""
    log = LabelLog(version.parents[2], version.parent.name, version.name, reviewer)
    try:
        for pair_id, c in choices.items():
            screen = {"chosen": "left", "rejected": "right"}.get(c, c)
            log.append(label(version, reviewer, pair_id, screen))
    finally:
        log.close()


# --- sampling ---------------------------------------------------------------------------------

def test_strata_follow_the_metadata_and_margin_quartiles(version):
    strata = {s.pair_id: s for s in stratify(version, read_manifest(version))}
    assert len(strata) == 40
    assert strata["pair-003"].stratum == "judge_flip"
    assert strata["pair-007"].stratum == "small_margin" and strata["pair-014"].flags == ("small_margin",)
    assert strata["pair-009"].stratum == "length_borderline"  # 70 / 20 = 3.5 in [3, 4]
    assert strata["pair-000"].flags == ("small_margin", "length_borderline")  # both; the first is its stratum
    assert strata["pair-010"].stratum == "unscored"
    quartiles = Counter(s.stratum for s in strata.values() if s.stratum.startswith("margin_q"))
    assert sorted(quartiles) == ["margin_q1", "margin_q2", "margin_q3", "margin_q4"]
    assert max(quartiles.values()) - min(quartiles.values()) <= 1
    # quartiles by rank of score_margin: every q1 margin is below every q2 margin
    by_q = {q: [0.1 * (int(p[-3:]) + 1) for p, s in strata.items() if s.stratum == q] for q in quartiles}
    assert max(by_q["margin_q1"]) < min(by_q["margin_q2"]) and max(by_q["margin_q3"]) < min(by_q["margin_q4"])


def test_sample_is_seeded_stratified_and_grows_by_prefix(version):
    pairs = stratify(version, read_manifest(version))
    a, b = draw(pairs, 12, seed=7, key="rev@v0001"), draw(pairs, 12, seed=7, key="rev@v0001")
    assert a == b and len({s.pair_id for s in a}) == 12
    assert draw(pairs, 12, seed=8, key="rev@v0001") != a
    assert draw(pairs, 20, seed=7, key="rev@v0001")[:12] == a  # a larger sample starts with the smaller one
    counts = Counter(s.stratum for s in a)
    assert set(counts) == {s.stratum for s in pairs}  # every stratum is represented ...
    assert counts["judge_flip"] == 1 and max(counts.values()) - min(counts.values()) <= 1  # ... equally
    assert {s.left for s in draw(pairs, 40, 7, "k")} == {"chosen", "rejected"}
    assert all(s.left == left_side(s.pair_id, 7) for s in a)
    assert len(draw(pairs, 1000, 0)) == 40


def test_sample_ignores_shard_layout(tmp_path):
    one = publish_review_version(tmp_path / "a" / "data")
    strata = stratify(one, read_manifest(one))
    assert [s.pair_id for s in strata] == sorted(s.pair_id for s in strata)
    assert draw(strata, 10, 3, "k") == draw(list(reversed(strata)), 10, 3, "k")


# --- agreement maths ----------------------------------------------------------------------------

def test_kappa_and_accuracy_match_sklearn_and_hand_counts():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(1)
    humans = rng.choice(["chosen", "rejected", "tie"], size=80, p=[0.6, 0.3, 0.1]).tolist()
    items = [Judged(f"p{i}", h, "s", None) for i, h in enumerate(humans)]
    m = direction_agreement(items, resamples=500, seed=0)
    decisive = [h for h in humans if h != "tie"]
    assert m["pairs"] == 80 and m["human_ties"] == humans.count("tie")
    assert m["accuracy_excluding_ties"] == pytest.approx(decisive.count("chosen") / len(decisive))
    gold = [oriented(h, f"p{i}") for i, h in enumerate(humans)]
    pred = [oriented("chosen", f"p{i}") for i in range(80)]
    assert m["cohen_kappa"] == pytest.approx(cohen_kappa_score(gold, pred))
    lo, hi = m["ci95"]["accuracy_excluding_ties"]
    assert lo < m["accuracy_excluding_ties"] < hi and hi - lo < 0.35
    assert {oriented("chosen", f"p{i}") for i in range(80)} == {"a", "b"}  # the orientation is a coin
    assert oriented("rejected", "p1") != oriented("chosen", "p1") and oriented("tie", "p1") == "tie"
    assert a_is_chosen("p1") == a_is_chosen("p1")


def test_perfect_and_inverted_humans():
    same = direction_agreement([Judged(f"p{i}", "chosen", "s", None) for i in range(30)], 200)
    assert same["accuracy_excluding_ties"] == 1.0 and same["cohen_kappa"] == pytest.approx(1.0)
    assert same["ci95"]["accuracy_excluding_ties"] == [1.0, 1.0]
    inverted = direction_agreement([Judged(f"p{i}", "rejected", "s", None) for i in range(30)], 200)
    assert inverted["accuracy_excluding_ties"] == 0.0 and inverted["cohen_kappa"] < -0.9
    assert direction_agreement([])["accuracy_excluding_ties"] is None


def test_weighted_accuracy_weights_strata_by_their_share_of_the_version():
    # 10 labelled in each stratum; the version has 90 pairs of "big" and 10 of "flagged"
    items = ([Judged(f"b{i}", "chosen", "big", None) for i in range(9)] + [Judged("b9", "rejected", "big", None)]
             + [Judged(f"f{i}", "chosen" if i < 5 else "rejected", "flagged", None) for i in range(10)]
             + [Judged("t", "tie", "big", None)])
    value, (lo, hi) = weighted_accuracy(items, {"big": 90, "flagged": 10}, resamples=2000, seed=0)
    assert value == pytest.approx(0.9 * 0.9 + 0.1 * 0.5)  # the raw sample would say 0.7
    assert lo < value < hi and lo > 0.6
    # a stratum without decisive labels is left out and the others re-weighted
    assert weighted_accuracy([Judged("f", "chosen", "flagged", None)], {"big": 90, "flagged": 10})[0] == 1.0
    assert weighted_accuracy([Judged("t", "tie", "big", None)], {"big": 1}) == (None, [None, None])
    # strata of one label each, one right and one wrong: the interval is not a point
    _, (lo, hi) = weighted_accuracy([Judged("x", "chosen", "big", None), Judged("y", "rejected", "flagged", None)],
                                    {"big": 50, "flagged": 50}, resamples=500)
    assert lo == 0.0 and hi == 1.0


def test_consensus_and_inter_reviewer_kappa():
    from sklearn.metrics import cohen_kappa_score

    assert consensus(["chosen", "chosen", "rejected"]) == "chosen"
    assert consensus(["chosen", "rejected"]) == "tie" and consensus(["tie"]) == "tie"
    rng = np.random.default_rng(2)
    ids = [f"p{i}" for i in range(60)]
    x = dict(zip(ids, rng.choice(["chosen", "rejected", "tie"], 60).tolist()))
    y = {p: (v if rng.random() < 0.7 else "rejected") for p, v in x.items()}
    del y["p0"]
    [pair] = reviewer_agreement({"ann": x, "bob": y}, resamples=300)
    common = sorted(set(x) & set(y))
    assert pair["reviewers"] == ["ann", "bob"] and pair["pairs"] == 59
    assert pair["agreement"] == pytest.approx(np.mean([x[p] == y[p] for p in common]))
    assert pair["cohen_kappa"] == pytest.approx(cohen_kappa_score([oriented(x[p], p) for p in common],
                                                                  [oriented(y[p], p) for p in common]))
    assert pair["kappa_ci95"][0] < pair["cohen_kappa"] < pair["kappa_ci95"][1]
    assert len(reviewer_agreement({"a": x, "b": y, "c": x})) == 3


# --- durable labels ---------------------------------------------------------------------------

def test_labels_live_beside_the_version_and_undo_appends(version):
    root, name = version.parents[2], version.parent.name
    log = LabelLog(root, name, version.name, "ann")
    log.append(label(version, "ann", "pair-001", "left"))
    log.append(label(version, "ann", "pair-002", "right", left="rejected"))
    log.append(Undo(reviewer="ann", dataset=name, version=version.name, pair_id="pair-002"))
    log.append(label(version, "ann", "pair-002", "tie"))
    log.close()
    path = reviews_dir(root, name, version.name) / "labels-ann.jsonl"
    assert path.parent == version.parent / "reviews" / "v0001" and not path.is_relative_to(version)
    lines = path.read_text().splitlines()
    assert [json.loads(x)["kind"] for x in lines] == ["label", "label", "undo", "label"]
    records, bad = read_records(path)
    active = active_labels(records)
    assert bad == 0 and list(active) == ["pair-001", "pair-002"]
    assert active["pair-001"].preferred == "chosen" and active["pair-002"].preferred == "tie"
    assert label(version, "x", "p", "right", left="rejected").preferred == "chosen"
    assert label(version, "x", "p", "skip").preferred is None
    first = json.loads(lines[0])
    assert {"reviewer", "time", "pair_id", "left", "label", "seed", "stratum"} <= set(first)
    assert first["time"].endswith("+00:00")


def test_a_torn_last_line_is_skipped_and_never_glued_to_the_next(version):
    root, name = version.parents[2], version.parent.name
    write_labels(version, "ann", {"pair-001": "chosen"})
    path = reviews_dir(root, name, version.name) / "labels-ann.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"kind": "label", "reviewer": "ann", "pai')  # killed mid-write
    log = LabelLog(root, name, version.name, "ann")
    assert log.unreadable == 1 and list(log.active()) == ["pair-001"]
    log.append(label(version, "ann", "pair-002", "left"))
    log.close()
    records, bad = read_records(path)
    assert bad == 1 and [r.pair_id for r in records] == ["pair-001", "pair-002"]


def test_one_server_per_reviewer_and_version(version):
    root, name = version.parents[2], version.parent.name
    log = LabelLog(root, name, version.name, "ann")
    try:
        with pytest.raises(ReviewError, match="already has a review server open"):
            LabelLog(root, name, version.name, "ann")
        LabelLog(root, name, version.name, "bob").close()  # another reviewer is fine
    finally:
        log.close()
    with pytest.raises(ReviewError, match="invalid reviewer name"):
        LabelLog(root, name, version.name, "../evil")


def test_session_labels_only_the_pair_it_shows_and_resumes(version):
    root = version.parents[2]
    s = ReviewSession(version, root, "ann", 10, seed=1)
    first = s.state()["pair"]["pair_id"]
    s.label(first, "left")
    with pytest.raises(Exception, match="not the pair being shown"):
        s.label(first, "right")  # a double press
    second = s.state()["pair"]["pair_id"]
    s.label(second, "skip")
    with pytest.raises(Exception, match="the last label is not"):
        s.undo(first)
    s.undo(second)
    assert s.state()["pair"]["pair_id"] == second and s.state()["done"] == 1
    s.label(second, "tie")
    s.close()
    again = ReviewSession(version, root, "ann", 10, seed=1)  # a restart resumes after the labelled ones
    state = again.state()
    assert state["done"] == 2 and state["pair"]["pair_id"] == again.sample[2].pair_id
    assert state["last"] == {"pair_id": second, "label": "tie"}
    again.close()


def test_page_text_never_names_chosen_or_rejected(version):
    s = ReviewSession(version, version.parents[2], "ann", 40, seed=0)
    try:
        for sampled in s.sample:
            row = s.pairs[sampled.pair_id]
            texts = {row["chosen"][0]["content"], row["rejected"][0]["content"]}
            shown = s.state()["pair"]
            assert shown["pair_id"] == sampled.pair_id  # the sample's order
            assert {shown["left"], shown["right"]} == texts and set(shown) == {"pair_id", "index", "prompt",
                                                                                "left", "right"}
            assert shown["left"] == row[sampled.left][0]["content"]
            s.label(sampled.pair_id, "skip")
    finally:
        s.close()


# --- audit, card, export ----------------------------------------------------------------------

def test_audit_per_stratum_and_source_and_card_line(version):
    root, name = version.parents[2], version.parent.name
    assert human_audit(root, name, "v1") is None
    ids = [f"pair-{i:03d}" for i in range(40)]
    ann = {p: ("rejected" if i % 4 == 0 else "chosen") for i, p in enumerate(ids)}
    ann["pair-001"] = "tie"
    ann["pair-025"] = "skip"
    bob = {p: "chosen" for p in ids[:20]}
    write_labels(version, "ann", ann)
    write_labels(version, "bob", bob)
    audit = human_audit(root, name, 1, resamples=300)
    assert audit["reviewers"] == ["ann", "bob"] and audit["skipped"] == 1
    assert audit["pairs"] == 39 and audit["version_pairs"] == 40  # pair-025: only skipped
    # consensus: pairs 0, 4, 8, ... 16 are chosen by bob and rejected by ann -> ties; 1: tie by ann
    overall = audit["overall"]
    assert overall["human_ties"] == 5 + 1
    decisive = 39 - 6
    wrong = sum(1 for i in range(20, 40) if i % 4 == 0)
    assert overall["accuracy_excluding_ties"] == pytest.approx((decisive - wrong) / decisive)
    assert set(audit["sources"]) == set(SOURCES)
    assert sum(g["pairs"] for g in audit["strata"].values()) == 39
    assert sum(g["population"] for g in audit["strata"].values()) <= 40
    assert audit["strata"]["judge_flip"]["pairs"] == 1
    [inter] = audit["inter_reviewer"]
    assert inter["reviewers"] == ["ann", "bob"] and inter["pairs"] == 20
    line = headline(audit)
    assert line.startswith("human audit: 39 pairs, 0.")
    assert audit_sentence(audit, "rev@v0001").startswith(f"H{line[1:]}")
    assert human_audit(root, name, 1, reviewer="bob")["reviewers"] == ["bob"]

    readme_before = (version / "README.md").read_text()
    assert "Human audit: none yet. `prefpipe review rev@v0001`" in readme_before
    done = cli("card", "rev@v1", "--data-root", str(root))
    assert "rewrote" in done.stdout
    readme, report = (version / "README.md").read_text(), (version / "report.html").read_text()
    line = headline(human_audit(root, name, "v0001"))  # the card's: 1000 resamples
    assert f"H{line[1:]}" in readme and f"H{line[1:]}" in report
    assert "(by ann, bob)" in readme


def test_export_reads_back_through_the_gold_reader(version, tmp_path):
    root = version.parents[2]
    choices = {"pair-000": "rejected", "pair-001": "chosen", "pair-002": "tie", "pair-005": "chosen",
               "pair-004": "rejected", "pair-006": "skip"}
    write_labels(version, "ann", choices)
    out = tmp_path / "gold.jsonl"
    done = cli("review", "rev@v1", "--export", str(out), "--data-root", str(root))
    assert "wrote 5 gold pairs (4 preferences, 1 ties)" in done.stdout
    pairs, rejected = load_gold(out)
    assert rejected == [] and len(pairs) == 5
    by_prompt = {p.prompt[-1]["content"]: p for p in pairs}
    texts = {i: _pair(i) for i in (0, 1, 2, 4, 5)}

    def winner(p):
        return {"a": p.response_a, "b": p.response_b}.get(p.label)

    assert winner(by_prompt["Follow-up question 0?"]) == texts[0]["rejected"][0]["content"]
    assert by_prompt["Follow-up question 0?"].prompt == texts[0]["prompt"]  # the multi-turn prompt stays one
    assert winner(by_prompt["Question 1: how do I do thing 1?"]) == texts[1]["chosen"][0]["content"]
    assert by_prompt["Question 2: how do I do thing 2?"].label == "tie"
    assert winner(by_prompt["Question 4: how do I do thing 4?"]) == texts[4]["rejected"][0]["content"]
    assert {p.category for p in pairs} == set(SOURCES)  # eval-annotator groups by the pair's source
    # eval-annotator reads it as its CLI does (load_gold with --limit/--seed) and scores baselines on it
    sampled, _ = load_gold(out, "auto", 3, 5)
    assert len(sampled) == 3 and {p.source_row for p in sampled} <= {p.source_row for p in pairs}
    longer = trivial_verdicts(pairs)["longer_response"]
    m = metrics([p.label for p in pairs], longer, [len(p.response_a) for p in pairs],
                [len(p.response_b) for p in pairs], resamples=50)
    hand = sum(v == p.label for v, p in zip(longer, pairs) if p.label != "tie") / 4
    assert m["pairs"] == 5 and m["gold_ties"] == 1 and m["accuracy_excluding_ties"] == pytest.approx(hand)


# --- the CLI --------------------------------------------------------------------------------

@pytest.mark.parametrize("ref, code, message", [
    ("rev@vX", 2, "invalid version 'vX': expected vN"),
    ("../etc@v1", 2, "invalid dataset name '../etc'"),
    ("rev@v9", 1, "rev has no version v0009 (has v0001)"),
    ("nope@v1", 1, "no published versions of dataset 'nope'"),
])
def test_bad_version_names_fail_in_one_line(version, ref, code, message):
    run = cli("review", ref, "--data-root", str(version.parents[2]), "--report", check=False)
    assert run.returncode == code, run.stderr
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: ") and message in run.stderr


def test_report_without_labels_and_bad_reviewer_fail_in_one_line(version):
    root = str(version.parents[2])
    run = cli("review", "rev@v1", "--report", "--data-root", root, check=False)
    assert run.returncode == 1 and run.stderr.count("\n") == 1
    assert "no labels for rev@v0001" in run.stderr and "prefpipe review rev@v0001" in run.stderr
    run = cli("review", "rev@v1", "--reviewer", "a b/c", "--data-root", root, check=False)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "invalid reviewer name" in run.stderr


def test_report_prints_strata_sources_and_json(version):
    root = version.parents[2]
    write_labels(version, "ann", {f"pair-{i:03d}": "chosen" for i in range(12)})
    text = cli("review", "rev@v1", "--report", "--data-root", str(root)).stdout
    assert "human audit: 12 pairs, 1.00" in text and "stratum judge_flip" in text and "source alpha.jsonl" in text
    data = json.loads(cli("review", "rev@v1", "--report", "--json", "--data-root", str(root)).stdout)
    assert data["pairs"] == 12 and data["overall"]["accuracy_excluding_ties"] == 1.0


def _start(root: Path, port: int, reviewer: str = "ann", *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "review", "rev@v1", "--data-root", str(root),
                             "--port", str(port), "--reviewer", reviewer, "--sample", "8", *extra],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"review server exited {proc.returncode}: {proc.stderr.read()}")
        try:
            httpx.get(url + "api/state", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("review server did not start")


def test_server_over_http_survives_a_kill_and_refuses_foreign_requests(version):
    root, port = version.parents[2], free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = _start(root, port)
    try:
        wait_up(url, proc)
        page = httpx.get(url)
        assert "Content-Security-Policy" in page.headers and "script-src 'self'" in page.headers["content-security-policy"]
        assert "<script src=\"/static/review.js\"" in page.text and "http" not in page.text.replace("http-equiv", "")
        state = httpx.get(url + "api/state").json()
        pid = state["pair"]["pair_id"]
        assert httpx.post(url + "api/label", json={"pair_id": pid, "label": "left"}).status_code == 200
        assert httpx.post(url + "api/label", json={"pair_id": pid, "label": "left"}).status_code == 409
        assert httpx.post(url + "api/label", json={"pair_id": "x", "label": "bogus"}).status_code == 422
        foreign = httpx.post(url + "api/label", json={"pair_id": pid, "label": "left"},
                             headers={"Origin": "http://evil.example"})
        assert foreign.status_code == 403
        assert httpx.get(url + "api/state", headers={"Host": "evil.example"}).status_code == 400
        current = httpx.get(url + "api/state").json()["pair"]["pair_id"]
        for headers in ({"Content-Type": "text/plain"}, {}):  # a "simple" cross-site request is no label
            plain = httpx.post(url + "api/label", content=json.dumps({"pair_id": current, "label": "left"}),
                               headers=headers)
            assert plain.status_code == 415
        assert httpx.get(url + "api/state").json()["done"] == 1
        busy = _start(root, port, "bob")  # the port is taken: one line, exit 1
        assert busy.wait(60) == 1
        assert busy.stderr.read().count("\n") == 1
        same = _start(root, free_port())  # the same reviewer twice: one line, exit 1
        assert same.wait(60) == 1 and "already has a review server open" in same.stderr.read()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    proc = _start(root, port)
    try:
        wait_up(url, proc)
        state = httpx.get(url + "api/state").json()
        assert state["done"] == 1 and state["pair"]["pair_id"] != pid
        summary = httpx.get(url + "summary").text
        assert "human audit: 1 pairs" in summary and "stratum " in summary
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
