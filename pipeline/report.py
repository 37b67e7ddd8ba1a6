"""The HTML report beside each data card: one self-contained page, matplotlib PNGs embedded as
base64, every piece of text from the data HTML-escaped (Jinja2 autoescape).

Plots use the object-oriented Agg canvas (no pyplot state) and render a "no data" panel instead of
failing when a version has no pairs, no drops or no scores.
"""

from __future__ import annotations

import base64
import io

import jinja2
import polars as pl
from markupsafe import Markup
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.version_stats import metadata_values

SAMPLE_PAIRS = 20
SAMPLE_CHARS = 1500


def _figure(width: float = 7, height: float = 3.6) -> Figure:
    fig = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(fig)
    return fig


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: idempotent bytes
    return buf.getvalue()


def _no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def funnel_png(funnel: list[dict]) -> bytes:
    """Rows kept and dropped per stage, in pipeline order."""
    fig = _figure(7, 0.6 + 0.55 * max(len(funnel), 2))
    ax = fig.add_subplot()
    if not funnel:
        _no_data(ax, "no funnel recorded")
        return png(fig)
    stages = [s["stage"] for s in funnel][::-1]
    kept = [s["rows_out"] for s in funnel][::-1]
    dropped = [s["rows_dropped"] for s in funnel][::-1]
    ax.barh(stages, kept, color="#4c72b0", label="kept")
    ax.barh(stages, dropped, left=kept, color="#dd8452", label="dropped")
    for y, (k, d) in enumerate(zip(kept, dropped)):
        ax.text(k + d, y, f" {k:,} kept / {d:,} dropped", va="center", fontsize=8)
    ax.set_xlim(0, max(max(k + d for k, d in zip(kept, dropped)), 1) * 1.45)
    ax.set_xlabel("rows into the stage")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Funnel")
    return png(fig)


def _values(series: pl.Series) -> list[float]:
    return series.cast(pl.Float64, strict=False).drop_nulls().drop_nans().to_list()


def scores_png(df: pl.DataFrame) -> bytes:
    """Histograms of chosen/rejected scores and of the margin."""
    fig = _figure(9, 3.4)
    ax1, ax2 = fig.subplots(1, 2)
    chosen, rejected, margin = (_values(df[c]) for c in ("score_chosen", "score_rejected", "margin"))
    if chosen or rejected:
        ax1.hist([chosen, rejected], bins=30, label=["chosen", "rejected"], color=["#55a868", "#c44e52"],
                 alpha=0.8)
        ax1.legend(fontsize=8)
        ax1.set_xlabel("score")
    else:
        _no_data(ax1, "no scores recorded")
    ax1.set_title("Scores")
    if margin:
        ax2.hist(margin, bins=30, color="#8172b3")
        ax2.set_xlabel("score_chosen - score_rejected")
    else:
        _no_data(ax2, "no margins recorded")
    ax2.set_title("Margin")
    return png(fig)


def ches_png(values: list[float], threshold: float | None) -> bytes:
    """CHES distribution with the cut marked (pairs above the cut were dropped)."""
    fig = _figure(7, 3.2)
    ax = fig.add_subplot()
    if values:
        ax.hist(values, bins=30, color="#64b5cd")
        ax.set_xlabel("CHES score (kept pairs)")
    else:
        _no_data(ax, "no CHES scores recorded")
    if threshold is not None:
        ax.axvline(threshold, color="#c44e52", linestyle="--", label=f"cut = {threshold:g}")
        ax.legend(fontsize=8)
    ax.set_title("CHES")
    return png(fig)


def lengths_png(df: pl.DataFrame) -> bytes:
    """Chosen vs rejected response length (characters); points above the diagonal: longer chosen."""
    fig = _figure(5, 4.6)
    ax = fig.add_subplot()
    if df.is_empty():
        _no_data(ax, "no pairs")
    else:
        x, y = df["rejected_chars"].to_list(), df["chosen_chars"].to_list()
        ax.scatter(x, y, s=6, alpha=0.5, color="#4c72b0")
        top = max(max(x), max(y), 1)
        ax.plot([0, top], [0, top], color="0.5", linewidth=1, linestyle="--")
        ax.set_xlabel("rejected length (chars)")
        ax.set_ylabel("chosen length (chars)")
    ax.set_title("Response lengths")
    return png(fig)


def contamination_png(benchmarks: dict) -> bytes:
    """Benchmark items hit per benchmark."""
    fig = _figure(7, 0.6 + 0.5 * max(len(benchmarks), 2))
    ax = fig.add_subplot()
    if benchmarks:
        names = sorted(benchmarks)
        hits = [benchmarks[n].get("items_hit", 0) for n in names]
        ax.barh(names, hits, color="#c44e52")
        ax.set_xlabel("benchmark items matched")
    else:
        _no_data(ax, "no decontamination recorded")
    ax.set_title("Contamination hits")
    return png(fig)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _text(messages: list[dict] | None) -> str:
    return "\n\n".join(f"[{m['role']}] {m['content']}" for m in messages or [])


def _clip(text: str) -> str:
    return text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS] + " …"


def sample_pairs(df: pl.DataFrame, n: int = SAMPLE_PAIRS) -> list[dict]:
    """A deterministic sample (lowest pair ids), texts clipped; raw text, escape when rendering."""
    rows = df.sort("pair_id").head(n).to_dicts()
    return [{"pair_id": r["pair_id"], "prompt": _clip(_text(r["prompt"])), "chosen": _clip(_text(r["chosen"])),
             "rejected": _clip(_text(r["rejected"])), "score_chosen": r["score_chosen"],
             "score_rejected": r["score_rejected"], "chosen_model": r["chosen_model"],
             "rejected_model": r["rejected_model"], "source": r["source"], "source_row": r["source_row"]}
            for r in rows]


def figures(manifest: dict, df: pl.DataFrame) -> dict[str, str]:
    """Every plot as base64 PNG, keyed by name."""
    ches = manifest.get("ches") or {}
    return {
        "funnel": _b64(funnel_png(manifest.get("funnel", []))),
        "scores": _b64(scores_png(df)),
        "ches": _b64(ches_png(_values(metadata_values(df["metadata"], "ches")), ches.get("threshold"))),
        "lengths": _b64(lengths_png(df)),
        "contamination": _b64(contamination_png((manifest.get("decontamination") or {}).get("benchmarks", {}))),
    }


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
img { max-width: 100%; }
</style></head><body>
<h1>{{ m.name }} {{ m.version }}</h1>
<p>{{ m.recipe.description or "A preference dataset built by prefpipe." }}</p>
<p><b>{{ s.rows }}</b> pairs; <b>{{ s.rows_dropped }}</b> rows dropped (see <code>dropped/</code>).
Created {{ m.created_at }} by <code>{{ m.command }}</code>; code {{ m.code_version }};
parent version {{ m.parent_version or "none" }}.</p>
{% for w in warnings %}<p class="warn">{{ w }}</p>{% endfor %}

<h2>Funnel</h2>
<img alt="funnel" src="data:image/png;base64,{{ fig.funnel }}">
<table><tr><th>stage</th><th>rows in</th><th>rows out</th><th>dropped</th><th>output rows</th><th>drop reasons</th></tr>
{% for st in m.funnel %}<tr><td>{{ st.stage }}</td><td class="n">{{ st.rows_in }}</td><td class="n">{{ st.rows_out }}</td>
<td class="n">{{ st.rows_dropped }}</td><td class="n">{{ st.outputs_written }}</td>
<td>{% for r, c in st.reasons.items() %}{{ r }}: {{ c }}{% if not loop.last %}, {% endif %}{% else %}-{% endfor %}</td></tr>
{% endfor %}</table>

<h2>Scores and margins</h2>
<img alt="score and margin histograms" src="data:image/png;base64,{{ fig.scores }}">
{{ summary_table(s.distributions) }}

<h2>CHES</h2>
{% if m.ches %}<p>Cut: threshold {{ m.ches.threshold }}, fraction {{ m.ches.fraction }}.</p>
{% else %}<p>CHES cut: not recorded.</p>{% endif %}
<img alt="CHES distribution" src="data:image/png;base64,{{ fig.ches }}">

<h2>Lengths</h2>
<img alt="chosen vs rejected length" src="data:image/png;base64,{{ fig.lengths }}">
{{ summary_table(s.lengths) }}
<p>Length bias: the chosen response is the longer one in
{% if s.length_bias.longer_chosen_rate is none %}- (no pairs of different length)
{% else %}{{ "%.1f"|format(100 * s.length_bias.longer_chosen_rate) }}% of {{ s.length_bias.pairs - s.length_bias.equal_length }} pairs of different length{% endif %}.</p>

<h2>Decontamination</h2>
<img alt="contamination hits per benchmark" src="data:image/png;base64,{{ fig.contamination }}">
{% if m.decontamination %}<table><tr><th>benchmark</th><th>items hit</th><th>rows dropped</th></tr>
{% for name, b in m.decontamination.benchmarks|dictsort %}<tr><td>{{ name }}</td><td class="n">{{ b.items_hit }}</td>
<td class="n">{{ (b.rows or [])|length }}</td></tr>{% endfor %}</table>{% else %}<p>Not recorded.</p>{% endif %}

<h2>Models</h2>
{% if m.models %}<table>{% for k, v in m.models|dictsort %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>
{% else %}<p>Not recorded in the manifest.</p>{% endif %}
<p>Models named in the pairs: {{ s.models_in_data|join(", ") or "none" }}.
Annotators: {{ s.annotators|join(", ") or "none" }}.</p>

<h2>Judge reliability</h2>
{% if m.judge_reliability %}<table>{% for k, v in m.judge_reliability|dictsort %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>
{% else %}<p>Not recorded.</p>{% endif %}

<h2>Parent version and what changed</h2>
{% if change %}<p>Compared with {{ change.a }}: <b>{{ change.added }}</b> pairs added, <b>{{ change.removed }}</b> removed,
{{ change.unchanged }} unchanged (by pair id); {{ change.rows.a }} &rarr; {{ change.rows.b }} rows.</p>
{% elif m.parent_version %}<p>Parent version {{ m.parent_version }} not found beside this version.</p>
{% else %}<p>No parent version: this is the first version of {{ m.name }}.</p>{% endif %}

<h2>Sample of pairs</h2>
{% for p in sample %}<h3>{{ p.pair_id }}</h3>
<p>{{ p.source }} row {{ p.source_row }}; chosen by {{ p.chosen_model or "?" }} (score {{ p.score_chosen }}),
rejected by {{ p.rejected_model or "?" }} (score {{ p.score_rejected }})</p>
<table><tr><th>prompt</th><td><pre>{{ p.prompt }}</pre></td></tr>
<tr><th>chosen</th><td><pre>{{ p.chosen }}</pre></td></tr>
<tr><th>rejected</th><td><pre>{{ p.rejected }}</pre></td></tr></table>
{% else %}<p>No pairs in this version.</p>{% endfor %}
</body></html>
"""

SUMMARY = """<table><tr><th>column</th><th>count</th><th>missing</th><th>mean</th><th>std</th><th>min</th>
<th>p25</th><th>median</th><th>p75</th><th>max</th></tr>
{% for col, v in rows|dictsort %}<tr><td>{{ col }}</td><td class="n">{{ v.count }}</td><td class="n">{{ v.missing }}</td>
{% for k in ["mean", "std", "min", "p25", "median", "p75", "max"] %}<td class="n">{{ v.get(k, "-") }}</td>{% endfor %}</tr>
{% endfor %}</table>"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined, keep_trailing_newline=True)


def render_report(manifest: dict, stats: dict, df: pl.DataFrame, warnings: list[str],
                  change: dict | None = None) -> str:
    """The report page; `change` is `pipeline.diff.diff_versions(parent, this)` when there is a parent."""
    summary = _ENV.from_string(SUMMARY)
    return _ENV.from_string(TEMPLATE).render(
        m=manifest, s=stats, fig=figures(manifest, df), sample=sample_pairs(df), warnings=warnings,
        change=change, summary_table=lambda rows: Markup(summary.render(rows=rows)))
