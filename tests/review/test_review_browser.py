"""The review page in a real browser: Debian's Chromium (/usr/bin/chromium) driven by playwright
(no browser download) against the real `prefpipe review` server on 127.0.0.1, started as a
subprocess through the CLI. Ten pairs labelled by keyboard (with one undo), the server killed with
SIGKILL, restarted, the sample finished: every pair's label is in the label file exactly once, with
the side it was shown on; a response holding `<script>` and `<img onerror>` shows as text and runs
nothing. Screenshots are saved under the test's tmp dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path


from pipeline.publish.store import read_manifest
from pipeline.review.records import Label, Undo, read_records, reviews_dir
from pipeline.review.sample import draw, stratify
from tests.helpers import REPO, free_port
from tests.fixtures.browser import PNG_SIGNATURE
from tests.review.test_review import XSS, publish_review_version, wait_up

SAMPLE = 16
KEYS = ["1", "2", "t", "s"]
LABEL_OF = {"1": "left", "2": "right", "t": "tie", "s": "skip"}


def start(root: Path, port: int, seed: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "review", "rev@v1", "--data-root", str(root),
                             "--port", str(port), "--reviewer", "ann", "--sample", str(SAMPLE), "--seed", str(seed)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def shown(page) -> dict:
    return page.evaluate("""() => ({pair: document.body.dataset.pair, done: Number(document.body.dataset.done),
        left: document.getElementById("left-text").textContent, right: document.getElementById("right-text").textContent,
        turns: [...document.querySelectorAll("#conversation .turn")].map(t => t.className),
        progress: document.getElementById("progress").textContent})""")


def press(page, key: str, done_after: int) -> None:
    page.keyboard.press(key)
    page.wait_for_function(f"() => document.body.dataset.done === '{done_after}' && !document.body.dataset.busy")


def test_label_by_keyboard_kill_restart_finish(browser, tmp_path):
    root = tmp_path / "data"
    version = publish_review_version(root)
    strata = stratify(version, read_manifest(version))
    # a seed whose first ten pairs include the XSS pair (pair-004) and a multi-turn prompt (pair-0x0, 0x5)
    seed = next(s for s in range(200) if "pair-004" in [p.pair_id for p in draw(strata, 10, s, "rev@v0001")]
                and any(int(p.pair_id[-3:]) % 5 == 0 for p in draw(strata, 10, s, "rev@v0001")))
    sample = draw(strata, SAMPLE, seed, "rev@v0001")
    left_of = {p.pair_id: p.left for p in sample}
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    pressed: dict[str, str] = {}
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.add_init_script("window.__xss = undefined;")
    server = start(root, port, seed)
    try:
        wait_up(url, server)
        page.goto(url, wait_until="load")
        page.wait_for_function("() => document.body.dataset.pair")
        for k in range(10):
            now = shown(page)
            assert now["done"] == k and now["pair"] == sample[k].pair_id and now["progress"] == f"{k} of {SAMPLE} labelled"
            if int(now["pair"][-3:]) % 5 == 0:
                assert now["turns"] == ["turn system", "turn user", "turn assistant", "turn user"]
            if now["pair"] == "pair-004":
                side = "left" if left_of["pair-004"] == "chosen" else "right"
                assert XSS in now[side]  # the markup is text on the page ...
                assert page.locator("#responses script, #responses img, #conversation img").count() == 0
                assert page.evaluate("window.__xss") is None  # ... and nothing of it ran
                page.screenshot(path=str(tmp_path / "review-xss.png"), full_page=True)
            key = KEYS[k % 4]
            press(page, key, k + 1)
            pressed[now["pair"]] = key
            if k == 4:  # undo the fifth label: the pair comes back, and is labelled again
                page.keyboard.press("u")
                page.wait_for_function("() => document.body.dataset.done === '4' && !document.body.dataset.busy")
                assert shown(page)["pair"] == now["pair"]
                press(page, "2", 5)
                pressed[now["pair"]] = "2"
    finally:
        os.kill(server.pid, signal.SIGKILL)  # no shutdown: what was acknowledged must be on disk
        server.wait()
    page.keyboard.press("1")  # the server is gone: the page says so and labels nothing
    page.wait_for_function("() => document.getElementById('status').textContent.includes('not answering')")
    assert shown(page)["done"] == 10

    server = start(root, port, seed)
    try:
        wait_up(url, server)
        page.reload(wait_until="load")
        page.wait_for_function("() => document.body.dataset.pair")
        assert shown(page)["done"] == 10 and shown(page)["pair"] == sample[10].pair_id  # resumes at the next
        for k in range(10, SAMPLE):
            now = shown(page)
            assert now["pair"] == sample[k].pair_id
            press(page, KEYS[k % 4], k + 1)
            pressed[now["pair"]] = KEYS[k % 4]
        page.wait_for_selector("#done", state="visible")
        assert page.locator("#review").is_hidden()
        page.screenshot(path=str(tmp_path / "review-done.png"), full_page=True)
        page.goto(url + "summary", wait_until="load")
        summary = page.inner_text("body")
        assert f"ann: {SAMPLE} of {SAMPLE} pairs labelled" in summary and "human audit:" in summary
        page.screenshot(path=str(tmp_path / "review-summary.png"), full_page=True)
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(60) == 0
        page.close()

    for png in ("review-xss.png", "review-done.png", "review-summary.png"):
        assert (tmp_path / png).read_bytes().startswith(PNG_SIGNATURE)
    records, bad = read_records(reviews_dir(root, "rev", "v0001") / "labels-ann.jsonl")
    assert bad == 0
    labels = [r for r in records if isinstance(r, Label)]
    undos = [r for r in records if isinstance(r, Undo)]
    undone = sample[4].pair_id
    assert [u.pair_id for u in undos] == [undone]
    counts = Counter(r.pair_id for r in labels)
    assert set(counts) == {p.pair_id for p in sample} and len(labels) == SAMPLE + 1
    assert {p: c for p, c in counts.items() if c != 1} == {undone: 2}  # once each, the undone one relabelled
    final = {r.pair_id: r for r in labels}  # the last label of each pair
    for pair_id, key in pressed.items():
        assert final[pair_id].label == LABEL_OF[key] and final[pair_id].left == left_of[pair_id]
        assert final[pair_id].reviewer == "ann" and final[pair_id].seed == seed
