"""report.html of real builds (tests/fixtures/card_versions.py) opened in a real browser: Debian's
headless Chromium (/usr/bin/chromium, `make install`) driven by playwright, no browser download.
No None/nan text, rounded numbers, every image loaded, legends clear of bars and labels, empty
sections one line; a full-page screenshot of each report is saved under the test's tmp dir."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.publish.report import _box, _figure
from tests.fixtures.browser import PNG_SIGNATURE

ONE_LINE_PX = 48  # a collapsed section: one paragraph, at most two lines of text

# What the page shows, measured by the browser: the text outside <pre> (data), each image's load
# state, natural and shown size and layout, and per section its content's height, paragraphs,
# images and table rows.
FACTS = """() => {
  const prose = document.body.cloneNode(true);
  prose.querySelectorAll("pre").forEach(p => p.remove());
  document.body.appendChild(prose); prose.style.position = "absolute"; prose.style.left = "-99999px";
  const text = prose.innerText; prose.remove();
  const images = [...document.images].map(i => ({plot: i.dataset.plot, complete: i.complete,
    naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight, shown: i.getBoundingClientRect().toJSON(),
    layout: JSON.parse(i.dataset.layout || "null")}));
  const sections = {};
  for (const s of document.querySelectorAll("section")) {
    const content = [...s.children].filter(c => c.tagName !== "H2");
    const top = Math.min(...content.map(c => c.getBoundingClientRect().top));
    const bottom = Math.max(...content.map(c => c.getBoundingClientRect().bottom));
    sections[s.id] = {height: content.length ? bottom - top : 0, paragraphs: s.querySelectorAll("p").length,
                      images: s.querySelectorAll("img").length, rows: s.querySelectorAll("tr").length,
                      text: s.innerText};
  }
  return {text, images, sections, overflow: document.documentElement.scrollWidth > window.innerWidth};
}"""


def intersects(a: list[int], b: list[int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def open_report(browser, version: Path, screenshot: Path) -> dict:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto((version / "report.html").as_uri(), wait_until="load")
        facts = page.evaluate(FACTS)
        page.screenshot(path=str(screenshot), full_page=True)
    finally:
        page.close()
    assert screenshot.read_bytes().startswith(PNG_SIGNATURE)
    return facts


def check_page(facts: dict) -> None:
    """What every report must satisfy, whatever its data."""
    text = facts["text"]
    assert not re.search(r"\bNone\b|\bnan\b|\bNaN\b|\bnull\b|undefined|\(score \?\)|by \?", text), \
        re.search(r".{60}(\bNone\b|\bnan\b|\bNaN\b|\bnull\b|undefined|by \?).{60}", text, re.S)
    assert not re.search(r"\d\.\d{5,}", text), re.findall(r"\S*\d\.\d{5,}\S*", text)  # numbers rounded
    assert not facts["overflow"]
    for img in facts["images"]:
        assert img["complete"] and img["naturalWidth"] > 0 and img["naturalHeight"] > 0, img["plot"]
        layout = img["layout"]
        assert (img["naturalWidth"], img["naturalHeight"]) == (layout["width"], layout["height"]), img["plot"]
        assert img["shown"]["width"] > 0 and img["shown"]["height"] > 0
        legend = layout["legend"]
        if legend:
            assert 0 <= legend[0] < legend[2] <= layout["width"] and 0 <= legend[1] < legend[3] <= layout["height"]
            assert layout["marks"], img["plot"]
            hits = [m for m in layout["marks"] if intersects(legend, m)]
            assert not hits, (img["plot"], legend, hits)


def one_line(section: dict) -> bool:
    return (section["images"], section["rows"], section["paragraphs"]) == (0, 0, 1) and \
        0 < section["height"] <= ONE_LINE_PX


def test_the_overlap_check_sees_a_legend_drawn_over_the_bars():
    """The old funnel layout (legend inside the axes, lower right, over full-width bars) fails it."""
    fig = _figure(7, 2)
    ax = fig.add_subplot()
    bars = ax.barh(["ingest", "pairs"], [10, 10], label="kept")
    legend = ax.legend(loc="lower right")
    fig.canvas.draw()
    height = fig.bbox.height
    assert any(intersects(_box(legend, height), _box(b, height)) for b in bars)


@pytest.mark.parametrize("ref", ["hh@v1", "clean@v1", "alldropped@v1"])
def test_source_pair_reports_in_chromium(browser, card_versions, ref, tmp_path):
    facts = open_report(browser, card_versions[ref], tmp_path / f"report-{ref.replace('@', '-')}.png")
    check_page(facts)
    sections = facts["sections"]
    rows = {"hh@v1": 14, "clean@v1": 6, "alldropped@v1": 0}[ref]
    assert [i["plot"] for i in facts["images"]] == (["funnel", "lengths"] if rows else ["funnel"])
    # nothing to show -> one line: no scores (source labels), no CHES, no decontamination, no models
    for name in ("scores", "ches", "decontamination", "models", "judge"):
        assert one_line(sections[name]), (name, sections[name])
    assert "No scores: the pairs keep the source's own chosen/rejected labels" in sections["scores"]["text"]
    assert "No CHES filter ran on this version." in sections["ches"]["text"]
    if rows:
        assert "Chosen: the source's own chosen response, no score." in sections["sample"]["text"]
    else:
        assert one_line(sections["lengths"]) and one_line(sections["sample"])
    assert "Content warning: input hh-rlhf_harmless-base_test." in facts["text"]


def test_scored_report_in_chromium(browser, scored_version, tmp_path):
    facts = open_report(browser, scored_version, tmp_path / "report-scored.png")
    check_page(facts)
    plots = {i["plot"]: i for i in facts["images"]}
    assert list(plots) == ["funnel", "scores", "ches", "lengths", "contamination"]
    for name in ("funnel", "scores", "ches"):
        assert plots[name]["layout"]["legend"], name  # these have legends, and they are clear of the bars
    sections = facts["sections"]
    ches = sections["ches"]["text"]
    assert "ranked pairs by ches_normalized" in ches and "at or above 1.2 was dropped" in ches
    # one benchmark hit out of 22: one bar, one table row; the 21 zeros are one sentence
    assert sections["decontamination"]["rows"] == 2
    assert "No hits in the other 21 benchmarks checked." in sections["decontamination"]["text"]
    assert "Chosen: generated by gen<b>A</b>, score 6.123." in sections["sample"]["text"]
    assert "generators\tgen<b>A</b> (model gen-a-model, vllm engine, 4 samples per prompt)" in sections["models"]["text"]
    assert "Self-preference: strong model 'strong-m' also generated candidates" in sections["biases"]["text"]
