"""The HTML report beside each data card: one self-contained page, matplotlib PNGs embedded as
base64, every piece of text from the data HTML-escaped (Jinja2 autoescape); and the sentences the
card shares with it (models, CHES cut, biases, provenance of a pair), so both say the same.

Plots use the object-oriented Agg canvas (no pyplot state). Legends sit in a strip above the axes,
never over the data; each image carries its layout (`data-layout`: pixel boxes of its legend and
of its bars and labels) so a browser test can check that. A section with nothing to show (no
scores, no CHES, no benchmark hit, no pairs) is one line of text, not an empty plot or a table of
zeros.
"""

from __future__ import annotations

import base64
import io
import json
import struct

import jinja2
import polars as pl
from markupsafe import Markup
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.stages.pair_filters import ChesStage
from pipeline.publish.version_stats import fmt_num

SAMPLE_PAIRS = 20
SAMPLE_CHARS = 1500
DPI = 90
LEGEND_STRIP = 0.86  # share of the figure's height left to the axes below the legend strip
SUMMARY_KEYS = ["mean", "std", "min", "p25", "median", "p75", "max"]


def _figure(width: float = 7, height: float = 3.6) -> Figure:
    """A figure of whole pixels (so the layout's boxes match the PNG exactly)."""
    fig = Figure(figsize=(round(width * DPI) / DPI, round(height * DPI) / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _box(artist, height: float) -> list[int]:
    """An artist's pixel box in the PNG (origin top left): [x0, y0, x1, y1]."""
    b = artist.get_window_extent()
    return [round(b.x0), round(height - b.y1), round(b.x1), round(height - b.y0)]


def render_png(fig: Figure) -> tuple[bytes, dict]:
    """(PNG bytes, layout): one legend for all axes in a strip above them; layout = image size,
    legend box and the boxes of every bar/patch and text label drawn inside the axes."""
    handles, labels = [], []
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    legend = fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8,
                        frameon=False) if labels else None
    fig.tight_layout(rect=(0, 0, 1, LEGEND_STRIP if legend else 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: idempotent bytes
    data = buf.getvalue()
    width, height = struct.unpack(">II", data[16:24])  # the PNG's IHDR: what a browser shows
    marks = [_box(a, height) for ax in fig.axes for a in [*ax.patches, *ax.texts] if a.get_visible()]
    layout = {"width": width, "height": height,
              "legend": _box(legend, height) if legend else None,
              "marks": [m for m in marks if m[2] > m[0] and m[3] > m[1]]}
    return data, layout


def funnel_plot(funnel: list[dict]) -> Figure:
    """Rows kept and dropped per stage, in pipeline order (`render_png` adds the legend)."""
    fig = _figure(7, 0.9 + 0.55 * max(len(funnel), 2))
    ax = fig.add_subplot()
    stages = [s["stage"] for s in funnel][::-1]
    kept = [s["rows_out"] for s in funnel][::-1]
    dropped = [s["rows_dropped"] for s in funnel][::-1]
    ax.barh(stages, kept, color="#4c72b0", label="kept")
    ax.barh(stages, dropped, left=kept, color="#dd8452", label="dropped")
    for y, (k, d) in enumerate(zip(kept, dropped)):
        ax.text(k + d, y, f" {k:,} kept / {d:,} dropped", va="center", fontsize=8)
    ax.set_xlim(0, max(max(k + d for k, d in zip(kept, dropped)), 1) * 1.45)
    ax.set_xlabel("rows into the stage")
    ax.set_title("Funnel")
    return fig


def _values(series: pl.Series) -> list[float]:
    return series.cast(pl.Float64, strict=False).drop_nulls().drop_nans().to_list()


def margin_column(df: pl.DataFrame) -> str:
    """The annotator's raw difference (`score_margin`) where the data has one, else `margin`."""
    return "score_margin" if "score_margin" in df.columns and df["score_margin"].drop_nulls().len() else "margin"


def scores_plot(df: pl.DataFrame) -> Figure:
    """Histograms of chosen/rejected scores and of the score margin."""
    fig = _figure(9, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    chosen, rejected = _values(df["score_chosen"]), _values(df["score_rejected"])
    ax1.hist([chosen, rejected], bins=30, label=["chosen", "rejected"], color=["#55a868", "#c44e52"], alpha=0.8)
    ax1.set_xlabel("score")
    ax1.set_title("Scores")
    ax2.hist(_values(df[margin_column(df)]), bins=30, color="#8172b3")
    ax2.set_xlabel("score_chosen - score_rejected")
    ax2.set_title("Score margin")
    return fig


def ches_plot(values: dict, key: str, cut: float | None, threshold: float | None) -> Figure:
    """Kept and dropped pairs' CHES (the form the filter cut on), the cut and threshold marked."""
    fig = _figure(7, 3.4)
    ax = fig.add_subplot()
    series = [(values["kept"], "kept", "#64b5cd"), (values["dropped"], "dropped", "#c44e52")]
    series = [s for s in series if s[0]]
    ax.hist([s[0] for s in series], bins=30, stacked=True, label=[s[1] for s in series],
            color=[s[2] for s in series])
    if cut is not None:
        ax.axvline(cut, color="#c44e52", linestyle="--", label=f"dropped at or above {cut:.4g}")
    if threshold is not None and threshold != cut:
        ax.axvline(threshold, color="0.3", linestyle=":", label=f"threshold {threshold:.4g}")
    ax.set_xlabel(f"{key} (pairs)")
    ax.set_title(f"CHES: {key}")
    return fig


def lengths_plot(df: pl.DataFrame) -> Figure:
    """Chosen vs rejected response length (characters); points above the diagonal: longer chosen."""
    fig = _figure(5, 4.6)
    ax = fig.add_subplot()
    x, y = df["rejected_chars"].to_list(), df["chosen_chars"].to_list()
    ax.scatter(x, y, s=6, alpha=0.5, color="#4c72b0")
    top = max(max(x), max(y), 1)
    ax.plot([0, top], [0, top], color="0.5", linewidth=1, linestyle="--")
    ax.set_xlabel("rejected length (chars)")
    ax.set_ylabel("chosen length (chars)")
    ax.set_title("Response lengths")
    return fig


def contamination_plot(hits: dict[str, int]) -> Figure:
    """Benchmark items matched, for the benchmarks with at least one hit."""
    fig = _figure(7, 0.9 + 0.45 * max(len(hits), 2))
    ax = fig.add_subplot()
    names = sorted(hits)
    ax.barh(names, [hits[n] for n in names], color="#c44e52")
    for y, n in enumerate(names):
        ax.text(hits[n], y, f" {hits[n]:,}", va="center", fontsize=8)
    ax.set_xlim(0, max(hits.values()) * 1.2)
    ax.set_xlabel("benchmark items matched")
    ax.set_title("Contamination hits")
    return fig


# --- sentences the card and the report share (plain text; each escapes it its own way) ---------

def percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def _generator(g) -> str:
    if not isinstance(g, dict):
        return str(g)
    name = g.get("name") or g.get("model") or "?"
    details = [f"model {g['model']}" if g.get("model") and g.get("model") != name else "",
               f"{g['engine']} engine" if g.get("engine") else "", f"{g['k']} samples per prompt" if g.get("k") else ""]
    details = [d for d in details if d]
    return name + (f" ({', '.join(details)})" if details else "")


METHOD_SCORER = {"judge_pointwise": "judge", "judge_pairwise": "judge", "density_ratio": "density ratio (strong / weak)",
                 "ensemble": "density ratio (strong / weak)", "reward_model": "reward model"}


def model_rows(manifest: dict) -> list[tuple[str, str | None]]:
    """(role, model in words or None when not recorded) for the models table."""
    m = manifest.get("models") or {}
    dr = m.get("density_ratio") or {}
    annotator = m.get("annotator") if isinstance(m.get("annotator"), dict) else {}
    rows = [("generators", ", ".join(_generator(g) for g in m["generators"]) if m.get("generators") else None)]
    if annotator.get("method"):
        rows.append(("annotation method", str(annotator["method"])))
    scorers = [("judge", str(m["judge"]) if m.get("judge") else None),
               ("density ratio (strong / weak)", f"{dr['strong']} / {dr['weak']}" if dr.get("strong") else None),
               ("reward model", str(annotator["reward"]) if annotator.get("reward") else None)]
    used = METHOD_SCORER.get(annotator.get("method"))  # a known method: only its scorer's row
    rows += [r for r in scorers if r[1] or r[0] == used or (used is None and r[0] != "reward model")]
    return rows + [("CHES model", str(m["ches_model"]) if m.get("ches_model") else None)]


def ches_sentence(manifest: dict, stats: dict) -> str:
    """What the CHES filter did, in one or two sentences."""
    cut = manifest.get("ches")
    asked = ((manifest.get("recipe") or {}).get("filters") or {}).get("ches")
    if not cut:
        return ("The recipe asks for a CHES filter, but the manifest records no CHES cut." if asked
                else "No CHES filter ran on this version.")
    key, model = stats["ches_score"], (manifest.get("models") or {}).get("ches_model")
    dropped = sum(d["rows"] for d in stats["dropped_by_reason"] if d["stage"] == ChesStage.name)
    rules = []
    if cut.get("threshold") is not None:
        rules.append(f"pairs whose {key} is above {fmt_num(float(cut['threshold']))}")
    if cut.get("fraction"):
        rules.append(f"the {100 * cut['fraction']:g}% of the build's pairs with the highest {key}")
    how = f"dropped {' and '.join(rules)}" if rules else "had neither a threshold nor a top fraction to drop"
    text = (f"The CHES filter{f' (model {model})' if model else ''} ranked pairs by {key} and {how}: "
            f"{dropped} pairs dropped.")
    if stats["ches_dropped"]["count"]:
        text += f" Every pair with {key} at or above {fmt_num(stats['ches_dropped']['min'])} was dropped."
    return text


def length_bias_sentence(stats: dict) -> str:
    lb = stats["length_bias"]
    rate = lb["longer_chosen_rate"]
    if rate is None:
        return "Length bias: no pairs of different length."
    text = (f"Length bias: the chosen response is the longer one in {percent(rate)} of the "
            f"{lb['pairs'] - lb['equal_length']} pairs of different length ({lb['equal_length']} ties).")
    if rate > 0.6:
        text += (" A model trained on these pairs may learn to be verbose; a length guard "
                 "(`filters.length.max_ratio`) or length-normalised training reduces that.")
    return text


def position_bias_sentence(manifest: dict) -> str:
    jr = manifest.get("judge_reliability") or {}
    first, flip = jr.get("first_position_win_rate"), jr.get("flip_rate")
    if first is None and flip is None:
        return ("Position bias: not measured (no pairwise judge annotated these pairs, so no answer order "
                "could sway a verdict).")
    parts = []
    if first is not None:
        parts.append(f"the judge preferred the response shown first in {percent(first)} of its verdicts")
    if flip is not None:
        parts.append(f"changed its verdict in {percent(flip)} of the pairs when the order was swapped "
                     "(such disagreements count as ties)")
    return "Position bias: " + " and ".join(parts) + "."


def self_preference_sentences(manifest: dict) -> list[str]:
    warned = [str(w) for w in manifest.get("warnings") or [] if "self-preference" in str(w)]
    if warned:
        return [f"Self-preference: {w}; an annotator tends to prefer its own outputs." for w in warned]
    if (manifest.get("models") or {}).get("generators"):
        return ["Self-preference: no annotator model also generated candidates."]
    return ["Self-preference: not applicable (no model generated or annotated these pairs)."]


def _side(model, origin, score, side: str) -> str:
    if origin == "on_policy":
        who = f"generated by {model}"
    elif model in (None, "source"):
        who = f"the source's own {side} response"
    else:
        who = f"the source's response by {model}" if origin == "off_policy" else f"by {model}"
    return f"{side.capitalize()}: {who}, " + (f"score {fmt_num(score)}." if score is not None else "no score.")


def provenance(p: dict) -> str:
    """Where a sampled pair comes from and how each side was chosen, as sentences."""
    where = f"{p['source']} row {p['source_row']}." if p.get("source") else "Source not recorded."
    return " ".join([where, _side(p["chosen_model"], p.get("chosen_origin"), p["score_chosen"], "chosen"),
                     _side(p["rejected_model"], p.get("rejected_origin"), p["score_rejected"], "rejected")])


# --- the page ----------------------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _text(messages: list[dict] | None) -> str:
    return "\n\n".join(f"[{m['role']}] {m['content']}" for m in messages or [])


def _clip(text: str) -> str:
    return text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS] + " …"


def sample_pairs(df: pl.DataFrame, n: int = SAMPLE_PAIRS) -> list[dict]:
    """A deterministic sample (lowest pair ids), texts clipped; raw text, escape when rendering."""
    return [{"pair_id": r["pair_id"], "prompt": _clip(_text(r["prompt"])), "chosen": _clip(_text(r["chosen"])),
             "rejected": _clip(_text(r["rejected"])), "provenance": provenance(r)}
            for r in df.sort("pair_id").head(n).to_dicts()]


def contamination_hits(manifest: dict) -> dict[str, int]:
    benchmarks = (manifest.get("decontamination") or {}).get("benchmarks", {})
    return {n: b.get("items_hit", 0) for n, b in benchmarks.items() if b.get("items_hit")}


def figures(manifest: dict, stats: dict, df: pl.DataFrame) -> dict[str, dict]:
    """The plots that have something to show, as {name: {"b64": PNG, "layout": json}}."""
    figs: dict[str, Figure] = {}
    if manifest.get("funnel"):
        figs["funnel"] = funnel_plot(manifest["funnel"])
    if stats["distributions"]["score_chosen"]["count"] or stats["distributions"]["score_rejected"]["count"]:
        figs["scores"] = scores_plot(df)
    if stats["ches"]["count"] or stats["ches_dropped"]["count"]:
        dropped = stats["ches_dropped"]
        figs["ches"] = ches_plot(stats["ches_values"], stats["ches_score"], dropped.get("min"),
                                (manifest.get("ches") or {}).get("threshold"))
    if df.height:
        figs["lengths"] = lengths_plot(df)
    if contamination_hits(manifest):
        figs["contamination"] = contamination_plot(contamination_hits(manifest))
    out = {}
    for name, fig in figs.items():
        data, layout = render_png(fig)
        out[name] = {"b64": _b64(data), "layout": json.dumps(layout, sort_keys=True)}
    return out


def summary_rows(summaries: dict) -> list[list[str]]:
    """Rows (column, count, missing, mean ... max) of the columns that have values; numbers rounded."""
    return [[col, str(v["count"]), str(v["missing"])] + [fmt_num(v.get(k)) for k in SUMMARY_KEYS]
            for col, v in summaries.items() if v["count"]]


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{{ m.name }} {{ m.version }} - prefpipe report</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: 90%; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
td.n { text-align: right; }
pre { white-space: pre-wrap; word-wrap: break-word; margin: 0; max-height: 18em; overflow: auto; }
.warn { background: #fff3cd; padding: .5em 1em; }
.content-warning { background: #f8d7da; padding: .5em 1em; }
img { max-width: 100%; display: block; }
</style></head><body>
<h1>{{ m.name }} {{ m.version }}</h1>
<p>{{ m.recipe.description or "A preference dataset built by prefpipe." }}</p>
<p><b>{{ s.rows }}</b> pairs; <b>{{ s.rows_dropped }}</b> rows dropped (see <code>dropped/</code>).
Created {{ m.created_at }}; code {{ m.code_version }};
{% if m.parent_version %}parent version {{ m.parent_version }}{% else %}no parent version{% endif %}.
Rebuild {{ rebuild[0] }} with <code>{{ rebuild[1] }}</code>.</p>
{% for w in content_warnings %}<p class="content-warning"><b>Content warning:</b> {{ w }}</p>{% endfor %}
{% for w in warnings %}<p class="warn">{{ w }}</p>{% endfor %}

<section id="funnel">
<h2>Funnel</h2>
{% if fig.funnel %}{{ img("funnel", "funnel") }}{% else %}<p>No funnel recorded.</p>{% endif %}
<table><tr><th>stage</th><th>rows in</th><th>rows out</th><th>dropped</th><th>output rows</th><th>drop reasons</th></tr>
{% for st in m.funnel %}<tr><td>{{ st.stage }}</td><td class="n">{{ st.rows_in }}</td><td class="n">{{ st.rows_out }}</td>
<td class="n">{{ st.rows_dropped }}</td><td class="n">{{ st.outputs_written }}</td>
<td>{% for r, c in st.reasons.items() %}{{ r }}: {{ c }}{% if not loop.last %}, {% endif %}{% else %}none{% endfor %}</td></tr>
{% endfor %}</table>

</section>
<section id="scores">
<h2>Scores and margins</h2>
{% if fig.scores %}{{ img("scores", "score and margin histograms") }}{{ summary_table(s.distributions) }}
{% else %}<p>No scores: the pairs keep the source's own chosen/rejected labels{% if s.distributions.margin.count %}
(<code>margin</code> is {{ fmt(s.distributions.margin.min) }}{% if s.distributions.margin.max != s.distributions.margin.min %} to {{ fmt(s.distributions.margin.max) }}{% endif %} for every pair){% endif %}.</p>{% endif %}

</section>
<section id="ches">
<h2>CHES</h2>
<p>{{ ches }}</p>
{% if fig.ches %}{{ img("ches", "CHES distribution") }}{% endif %}

</section>
<section id="lengths">
<h2>Lengths</h2>
{% if fig.lengths %}{{ img("lengths", "chosen vs rejected length") }}{{ summary_table(s.lengths) }}{% endif %}
<p>{{ length_bias }}</p>

</section>
<section id="decontamination">
<h2>Decontamination</h2>
{% if not m.decontamination %}<p>{% if m.recipe.decontam %}Not recorded.{% else %}Not run: the recipe has no decontam section.{% endif %}</p>
{% elif fig.contamination %}{{ img("contamination", "contamination hits per benchmark") }}
<table><tr><th>benchmark</th><th>items hit</th><th>rows dropped</th></tr>
{% for name, b in m.decontamination.benchmarks|dictsort if b.items_hit %}<tr><td>{{ name }}</td><td class="n">{{ b.items_hit }}</td>
<td class="n">{{ (b.rows or [])|length }}</td></tr>{% endfor %}</table>
<p>No hits in the other {{ m.decontamination.benchmarks|length - hits|length }} benchmarks checked.</p>
{% else %}<p>No prompt matched any of the {{ (m.decontamination.benchmarks or {})|length }} benchmarks checked{% if m.decontamination.benchmarks %} ({{ m.decontamination.benchmarks|dictsort|map("first")|join(", ") }}){% endif %}.</p>{% endif %}

</section>
<section id="models">
<h2>Models</h2>
{% if m.models %}<table>{% for role, model in models %}<tr><th>{{ role }}</th><td>{{ model or "not recorded" }}</td></tr>{% endfor %}</table>
<p>Models named in the pairs: {{ s.models_in_data|join(", ") or "none" }}.
Annotators: {{ s.annotators|join(", ") or "none" }}.</p>
{% else %}<p>No models: no model generated, annotated or filtered these pairs (annotator: {{ s.annotators|join(", ") or "none" }}).</p>{% endif %}

</section>
<section id="biases">
<h2>Biases</h2>
<ul><li>{{ length_bias }}</li><li>{{ position_bias }}</li>{% for line in self_preference %}<li>{{ line }}</li>{% endfor %}</ul>

</section>
<section id="judge">
<h2>Judge reliability</h2>
{% if m.judge_reliability %}<table>{% for k, v in judge %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>
{% else %}<p>Not recorded: no judge annotated these pairs.</p>{% endif %}

</section>
<section id="human-audit">
<h2>Human audit</h2>
<p>{{ human_audit }}</p>

</section>
<section id="parent">
<h2>Parent version and what changed</h2>
{% if change %}<p>Compared with {{ change.a }}: <b>{{ change.added }}</b> pairs added, <b>{{ change.removed }}</b> removed,
{{ change.unchanged }} unchanged (by pair id); {{ change.rows.a }} &rarr; {{ change.rows.b }} rows.</p>
{% elif m.parent_version %}<p>Parent version {{ m.parent_version }} not found beside this version.</p>
{% else %}<p>No parent version: this is the first version of {{ m.name }}.</p>{% endif %}

</section>
<section id="sample">
<h2>Sample of pairs</h2>
{% for p in sample %}<h3>{{ p.pair_id }}</h3>
<p>{{ p.provenance }}</p>
<table><tr><th>prompt</th><td><pre>{{ p.prompt }}</pre></td></tr>
<tr><th>chosen</th><td><pre>{{ p.chosen }}</pre></td></tr>
<tr><th>rejected</th><td><pre>{{ p.rejected }}</pre></td></tr></table>
{% else %}<p>No pairs in this version.</p>{% endfor %}
</section>
</body></html>
"""

SUMMARY = """<table><tr><th>column</th><th>count</th><th>missing</th>{% for k in keys %}<th>{{ k }}</th>{% endfor %}</tr>
{% for row in rows %}<tr><td>{{ row[0] }}</td>{% for c in row[1:] %}<td class="n">{{ c }}</td>{% endfor %}</tr>
{% endfor %}</table>"""

IMG = '<img alt="{{ alt }}" data-plot="{{ name }}" data-layout="{{ f.layout }}" src="data:image/png;base64,{{ f.b64 }}">'

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined, keep_trailing_newline=True)


def flat_items(section: dict, prefix: str = "") -> list[tuple[str, str]]:
    """A nested manifest section as (dotted key, rounded value) rows, never a Python dict."""
    rows = []
    for k, v in sorted(section.items()):
        if isinstance(v, dict):
            rows += flat_items(v, f"{prefix}{k}.")
        else:
            rows.append((f"{prefix}{k}", ", ".join(fmt_num(x) for x in v) if isinstance(v, list) else fmt_num(v)))
    return rows


def render_report(manifest: dict, stats: dict, df: pl.DataFrame, warnings: list[str],
                  change: dict | None = None, rebuild: tuple[str, str] | None = None,
                  content_warnings: list[str] | None = None, human_audit: str = "") -> str:
    """The report page; `change` is `pipeline.publish.diff.diff_versions(parent, this)` when there is a parent,
    `rebuild` (where to run it, command) as `pipeline.publish.card.rebuild` gives it (default: the manifest's)."""
    fig = figures(manifest, stats, df)
    summary, img = _ENV.from_string(SUMMARY), _ENV.from_string(IMG)
    return _ENV.from_string(TEMPLATE).render(
        m=manifest, s=stats, fig=fig, sample=sample_pairs(df), warnings=warnings, change=change,
        rebuild=rebuild or ("from where it was built", manifest.get("command", "")),
        content_warnings=content_warnings or [],
        human_audit=human_audit or "Human audit: none yet.",
        hits=contamination_hits(manifest), models=model_rows(manifest), ches=ches_sentence(manifest, stats),
        length_bias=length_bias_sentence(stats), position_bias=position_bias_sentence(manifest),
        self_preference=self_preference_sentences(manifest), judge=flat_items(manifest.get("judge_reliability") or {}),
        fmt=fmt_num,
        img=lambda name, alt: Markup(img.render(name=name, alt=alt, f=fig[name])),
        summary_table=lambda rows: Markup(summary.render(rows=summary_rows(rows), keys=SUMMARY_KEYS)))
