"""The data card: a Hugging Face dataset card (`README.md` with YAML front matter) and an HTML
report (`report.html`) per version, rendered from the manifest and from the version's own files.

Sections a stage has not recorded in the manifest say "not recorded". Text that comes from data
(prompts, responses, model names, the recipe's description) is HTML-escaped, so the card renders
no markup it was not written with. Rendering is deterministic: `regenerate` on an unchanged
version rewrites identical bytes.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import yaml

from pipeline.atomic import replace_file
from pipeline.diff import diff_versions, markdown as diff_markdown
from pipeline.lineage import chain_problems
from pipeline.report import render_report
from pipeline.store import read_manifest
from pipeline.version_stats import pairs_frame, version_stats

CARD_FILES = ("README.md", "report.html")
NOT_RECORDED = "not recorded"
SAMPLE_IN_CARD = 3
SAMPLE_CARD_CHARS = 300


def size_category(n: int) -> str:
    for limit, label in [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")]:
        if n < limit:
            return label
    return "n>10M"


def front_matter(manifest: dict) -> dict:
    licences = sorted({i["license"] for i in manifest.get("inputs", []) if i.get("license")})
    out_licence = manifest["recipe"]["output"].get("license")
    return {
        "license": out_licence or (licences[0].lower() if len(licences) == 1 else "other"),
        "task_categories": ["text-generation"],
        "tags": ["dpo", "preference", "prefpipe"],
        "pretty_name": f"{manifest['name']} {manifest['version']}",
        "size_categories": [size_category(manifest["rows"])],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}],
    }


def esc(value: object) -> str:
    """Data text for Markdown: no raw HTML, one line, safe inside a table cell."""
    text = html.escape(str(value), quote=False)
    return re.sub(r"\s+", " ", text).replace("|", "\\|").strip()


def fence(text: str, lang: str = "") -> str:
    """A code block whose fence is longer than any backtick run inside it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text}\n{ticks}"


def _num(x) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _table(header: list[str], rows: list[list], align: str | None = None) -> str:
    align = align or "|".join("---" if i == 0 else "---:" for i in range(len(header)))
    return "\n".join([f"| {' | '.join(header)} |", f"|{align}|"] +
                     [f"| {' | '.join(str(c) for c in r)} |" for r in rows])


def funnel_table(funnel: list[dict]) -> str:
    rows = [[esc(s["stage"]), s["rows_in"], s["rows_out"], s["rows_dropped"], s["outputs_written"],
             ", ".join(f"{esc(k)}: {v}" for k, v in s["reasons"].items()) or "-"] for s in funnel]
    return _table(["stage", "rows in", "rows out", "dropped", "output rows", "drop reasons"], rows,
                  "---|---:|---:|---:|---:|---")


def funnel_checks(manifest: dict, stats: dict) -> list[str]:
    """Every way the funnel's numbers must add up; a message per mismatch (empty: all add up)."""
    problems = []
    funnel = manifest.get("funnel", [])
    for s in funnel:
        if s["rows_in"] != s["rows_out"] + s["rows_dropped"]:
            problems.append(f"stage {s['stage']}: rows in {s['rows_in']} != rows out {s['rows_out']} "
                            f"+ dropped {s['rows_dropped']}")
        if sum(s["reasons"].values()) != s["rows_dropped"]:
            problems.append(f"stage {s['stage']}: drop reasons sum to {sum(s['reasons'].values())}, "
                            f"not {s['rows_dropped']}")
    problems += chain_problems(funnel)
    carried = (manifest.get("incremental") or {}).get("parent_rows_carried", 0)
    if funnel and funnel[-1]["outputs_written"] + carried != stats["rows"]:
        problems.append(f"last stage wrote {funnel[-1]['outputs_written']} rows"
                        + (f" (+ {carried} carried from the parent)" if carried else "")
                        + f", data/ holds {stats['rows']}")
    recorded = sum(s["rows_dropped"] for s in funnel)
    if funnel and recorded != stats["rows_dropped"]:
        problems.append(f"the funnel drops {recorded} rows, dropped/ holds {stats['rows_dropped']}")
    if manifest["rows"] != stats["rows"]:
        problems.append(f"manifest states {manifest['rows']} rows, data/ holds {stats['rows']}")
    in_files = {(d["stage"], d["reason"]): d["rows"] for d in stats["dropped_by_reason"]}
    in_funnel = {(s["stage"], r): n for s in funnel for r, n in s["reasons"].items()}
    for key in sorted(set(in_files) | set(in_funnel)):
        if in_files.get(key, 0) != in_funnel.get(key, 0):
            problems.append(f"{key[0]}/{key[1]}: funnel says {in_funnel.get(key, 0)} dropped, "
                            f"dropped/ holds {in_files.get(key, 0)}")
    return problems


def incremental_note(manifest: dict) -> str:
    inc = manifest.get("incremental")
    if not inc:
        return ""
    return (f" plus the {inc.get('parent_rows_carried', 0)} rows carried over from the parent version "
            f"(incremental build)")


def _kv(section: dict | None, keys: list[str]) -> str:
    if not section:
        return NOT_RECORDED.capitalize() + "."
    rows = [[esc(k), esc(_num(section.get(k)) if k in section else NOT_RECORDED)] for k in keys]
    rows += [[esc(k), esc(v)] for k, v in sorted(section.items()) if k not in keys]
    return _table(["", "value"], rows, "---|---")


def models_section(manifest: dict, stats: dict) -> str:
    m = manifest.get("models") or {}
    dr = m.get("density_ratio") or {}
    gens = m.get("generators")
    rows = [
        ["generators", ", ".join(esc(g) for g in gens) if gens else NOT_RECORDED],
        ["judge", esc(m["judge"]) if m.get("judge") else NOT_RECORDED],
        ["density ratio (strong / weak)",
         f"{esc(dr['strong'])} / {esc(dr['weak'])}" if dr.get("strong") else NOT_RECORDED],
        ["CHES model", esc(m["ches_model"]) if m.get("ches_model") else NOT_RECORDED],
    ]
    named = ", ".join(f"`{esc(x)}`" for x in stats["models_in_data"]) or "none"
    annotators = ", ".join(f"`{esc(x)}`" for x in stats["annotators"]) or "none"
    return (_table(["role", "model"], rows, "---|---") +
            f"\n\nModels named in the pairs: {named}. Annotators: {annotators}.")


def distribution_table(summaries: dict) -> str:
    keys = ["count", "missing", "mean", "std", "min", "p25", "median", "p75", "max"]
    return _table(["column"] + keys, [[c] + [_num(v.get(k)) for k in keys] for c, v in summaries.items()])


def scores_section(stats: dict) -> str:
    d = stats["distributions"]
    if not any(v["count"] for v in d.values()):
        return ("Scores and margins: not recorded (the pairs carry no scores, e.g. pairs taken from the "
                "source's own chosen/rejected labels).")
    return distribution_table(d)


def ches_section(manifest: dict, stats: dict) -> str:
    cut = manifest.get("ches")
    line = (f"CHES cut: threshold {_num(cut.get('threshold'))}, fraction {_num(cut.get('fraction'))}."
            if cut else f"CHES cut: {NOT_RECORDED}.")
    if stats["ches"]["count"]:
        return line + "\n\n" + distribution_table({"ches": stats["ches"]})
    return line + f" CHES scores of the pairs: {NOT_RECORDED}."


def decontam_section(manifest: dict) -> str:
    d = manifest.get("decontamination")
    if not d:
        return NOT_RECORDED.capitalize() + "."
    rows = [[esc(n), b.get("items_hit", 0), len(b.get("rows") or [])] for n, b in sorted(d.get("benchmarks", {}).items())]
    return _table(["benchmark", "items hit", "rows dropped"], rows) if rows else "No benchmarks were checked."


def dedup_section(manifest: dict) -> str:
    d = manifest.get("dedup")
    if not d:
        return NOT_RECORDED.capitalize() + "."
    return _table(["kind", "rows dropped"], [[k, d.get(k, NOT_RECORDED)] for k in ("exact", "near", "semantic")])


def lengths_section(stats: dict) -> str:
    lb = stats["length_bias"]
    rate = lb["longer_chosen_rate"]
    bias = ("Length bias: no pairs of different length." if rate is None else
            f"Length bias: the chosen response is the longer one in {100 * rate:.1f}% of the "
            f"{lb['pairs'] - lb['equal_length']} pairs of different length ({lb['equal_length']} ties).")
    return "Characters per side (all messages):\n\n" + distribution_table(stats["lengths"]) + "\n\n" + bias


def inputs_section(manifest: dict) -> str:
    rows = [[f"`{esc(Path(i['path']).name)}`", esc(i["format"]), esc(i.get("license") or "unknown"),
             i.get("max_rows") or "all", f"`{i['sha256'][:16]}…`"] for i in manifest.get("inputs", [])]
    return _table(["input", "format", "licence", "rows read", "sha256"], rows, "---|---|---|---|---")


def dropped_section(stats: dict) -> str:
    if not stats["dropped_by_reason"]:
        return "No rows were dropped."
    return _table(["stage", "reason", "rows in dropped/"],
                  [[esc(d["stage"]), esc(d["reason"]), d["rows"]] for d in stats["dropped_by_reason"]],
                  "---|---|---:")


def parent_section(manifest: dict, change: dict | None) -> str:
    if not manifest.get("parent_version"):
        return "None: this is the first version of this dataset."
    if change is None:
        return f"Parent version {manifest['parent_version']}: not found beside this version."
    return diff_markdown(change)


def sample_section(df) -> str:
    if df.is_empty():
        return "No pairs in this version."
    parts = []
    for r in df.sort("pair_id").head(SAMPLE_IN_CARD).iter_rows(named=True):
        def clip(messages):
            text = " / ".join(f"[{m['role']}] {m['content']}" for m in messages or [])
            return esc(text if len(text) <= SAMPLE_CARD_CHARS else text[:SAMPLE_CARD_CHARS] + " …")
        parts.append(f"- `{r['pair_id']}`\n  - prompt: {clip(r['prompt'])}\n  - chosen: {clip(r['chosen'])}"
                     f"\n  - rejected: {clip(r['rejected'])}")
    return "\n".join(parts)


def render_card(manifest: dict, stats: dict, df, change: dict | None, warnings: list[str]) -> str:
    name, version = manifest["name"], manifest["version"]
    recipe_yaml = yaml.safe_dump(manifest["recipe"], sort_keys=False, allow_unicode=True).strip()
    description = esc(manifest["recipe"].get("description") or "A preference dataset built by prefpipe.")
    jr = manifest.get("judge_reliability")
    checks = funnel_checks(manifest, stats)
    all_warnings = [esc(w) for w in warnings]
    body = f"""# {esc(name)} {version}

{description}

This version holds **{stats['rows']}** pairs in TRL's conversational preference format (`prompt`,
`chosen`, `rejected` as lists of `{{role, content}}` messages) with `score_chosen`, `score_rejected`,
`margin` and provenance columns (`pair_id`, models, annotator, source file and row, `metadata`).
**{stats['rows_dropped']}** rows were dropped on the way; each is in `dropped/` with its stage and reason.
Created {manifest['created_at']}. Plots and a sample of pairs: [report.html](report.html).

{chr(10).join(f"> **Warning:** {w}" + chr(10) for w in all_warnings)}
## Load it

{fence('''from datasets import load_dataset
ds = load_dataset("path/to/this/version", split="train")   # the YAML above points at data/*.parquet

import polars as pl
df = pl.read_parquet("path/to/this/version/data/*.parquet")''', "python")}

Train with TRL's `DPOTrainer` (it reads `prompt`, `chosen`, `rejected`):

{fence('''from trl import DPOConfig, DPOTrainer
train = ds.select_columns(["prompt", "chosen", "rejected"])
trainer = DPOTrainer(model=model, args=DPOConfig(output_dir="dpo-out"),
                     train_dataset=train, processing_class=tokenizer)
trainer.train()''', "python")}

## How it was made

Rebuild with (same recipe, inputs and code give the same build key `{manifest.get('build_key', '-')}`):

{fence(manifest['command'], 'sh')}

Code version `{manifest['code_version']}`, schema version {manifest['schema_version']},
recipe hash `{manifest['recipe_hash']}`:

{fence(recipe_yaml, 'yaml')}

## Models

{models_section(manifest, stats)}

## Funnel

{funnel_table(manifest.get('funnel', []))}

Rows in `dropped/` by stage and reason:

{dropped_section(stats)}

{"Every count adds up: each stage's rows in = rows out + dropped, drop reasons sum to the drops, each stage reads what the one before wrote, the last stage's output" + incremental_note(manifest) + " is the " + str(stats['rows']) + " rows in `data/`, and `dropped/` holds exactly the funnel's drops." if not checks else "**The counts do not add up:**" + chr(10) + chr(10).join("- " + esc(c) for c in checks)}

## Decontamination

{decontam_section(manifest)}

## Deduplication

{dedup_section(manifest)}

## Scores and margins

{scores_section(stats)}

{ches_section(manifest, stats)}

## Judge reliability

{_kv(jr, ["flip_rate", "first_position_win_rate", "longer_response_win_rate"]) if jr else NOT_RECORDED.capitalize() + "."}

## Lengths

{lengths_section(stats)}

## Inputs and licences

{inputs_section(manifest)}

Dataset licence: `{esc(front_matter(manifest)['license'])}`. Check the inputs' licences (and the terms
of any model whose outputs are included) before redistributing.

## Parent version and what changed

{parent_section(manifest, change)}

## Sample

{sample_section(df)}
"""
    body = re.sub(r"\n{3,}", "\n\n", body)
    return "---\n" + yaml.safe_dump(front_matter(manifest), sort_keys=False) + "---\n\n" + body


def parent_change(version_dir: Path, manifest: dict) -> dict | None:
    """Diff against the parent version (a sibling directory), or None when there is none."""
    parent = manifest.get("parent_version")
    parent_dir = Path(version_dir).parent / parent if parent else None
    if parent_dir is None or not (parent_dir / "manifest.json").is_file():
        return None
    return diff_versions(parent_dir, version_dir)


def render(version_dir: Path, manifest: dict) -> dict[str, str]:
    """README.md and report.html of a version, as text."""
    manifest = json.loads(json.dumps(manifest, sort_keys=True))  # as manifest.json stores it: same bytes
    df = pairs_frame(version_dir)
    stats = version_stats(version_dir, df)
    change = parent_change(version_dir, manifest)
    warnings = [str(w) for w in manifest.get("warnings") or []] + funnel_checks(manifest, stats)
    return {"README.md": render_card(manifest, stats, df, change, [str(w) for w in manifest.get("warnings") or []]),
            "report.html": render_report(manifest, stats, df, warnings, change)}


def _replace(path: Path, text: str) -> bool:
    """Atomically replace `path` with `text` (temp file in the same directory, then os.replace),
    leaving it read-only; False when it already holds exactly that text."""
    data = text.encode("utf-8")
    if path.is_file() and path.read_bytes() == data:
        return False
    replace_file(path, data, read_only=True)
    return True


def write_card(version_dir: Path, manifest: dict) -> None:
    """Write README.md and report.html into a version directory (called by `store.publish`)."""
    for name, text in render(Path(version_dir), manifest).items():
        _replace(Path(version_dir) / name, text)


def regenerate(version_dir: Path) -> dict[str, bool]:
    """Re-render the card and report of a published version; {file: changed}. Data is untouched."""
    version_dir = Path(version_dir)
    manifest = read_manifest(version_dir)
    return {name: _replace(version_dir / name, text) for name, text in render(version_dir, manifest).items()}
