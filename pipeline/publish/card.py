"""The data card: a Hugging Face dataset card (`README.md`: YAML metadata built with
`huggingface_hub`'s `DatasetCardData`, sections after the Hub's dataset-card template) and an HTML
report (`report.html`) per version, rendered from the manifest and from the version's own files.

Sections a stage has not recorded in the manifest say "not recorded". Text that comes from data
(prompts, responses, model names, the recipe's description) is HTML-escaped, so the card renders
no markup it was not written with. No absolute local path reaches the card or the report: the
rebuild command is relative to the data root, the recipe's paths to the recipe's directory.
The YAML config is named after the version's data (`NAME-vNNNN-DIGEST`), so `datasets`' cache,
keyed on the directory name and the config, never serves one version's rows for another.
Rendering is deterministic: `regenerate` on an unchanged version rewrites identical bytes.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq
import yaml

from pipeline.atomic import replace_file
from pipeline.publish.diff import diff_versions, markdown as diff_markdown
from pipeline.publish.paths import rebuild, recipe_anchored, relative_recipe
from pipeline.lineage import chain_problems
from pipeline.publish.report import (SUMMARY_KEYS, ches_sentence, flat_items, length_bias_sentence, model_rows, percent,
                             position_bias_sentence, render_report, self_preference_sentences, summary_rows)
from pipeline.publish.store import read_manifest
from pipeline.review.audit import card_paragraph as human_audit_paragraph  # `prefpipe review` labels
from pipeline.tables import PAIR
from pipeline.publish.version_stats import fmt_num, pairs_frame, version_stats

if TYPE_CHECKING:  # imported where used: they cost a build's start-up time
    from datasets import DatasetInfo
    from huggingface_hub import DatasetCardData

CARD_FILES = ("README.md", "report.html")
NOT_RECORDED = "not recorded"
SAMPLE_IN_CARD = 3
SAMPLE_CARD_CHARS = 300
# The Hub's size_categories values (upper bounds); larger is "n>1T".
SIZE_CATEGORIES = [(10 ** 3, "n<1K"), (10 ** 4, "1K<n<10K"), (10 ** 5, "10K<n<100K"), (10 ** 6, "100K<n<1M"),
                   (10 ** 7, "1M<n<10M"), (10 ** 8, "10M<n<100M"), (10 ** 9, "100M<n<1B"), (10 ** 10, "1B<n<10B"),
                   (10 ** 11, "10B<n<100B"), (10 ** 12, "100B<n<1T")]
LANGUAGE_NAMES = {"en": "English", "fr": "French", "de": "German", "es": "Spanish", "it": "Italian",
                  "pt": "Portuguese", "nl": "Dutch", "zh": "Chinese", "ja": "Japanese", "ko": "Korean",
                  "ru": "Russian", "ar": "Arabic", "hi": "Hindi", "el": "Greek", "he": "Hebrew", "th": "Thai",
                  "bn": "Bengali", "ta": "Tamil"}
# Public datasets recognised from an input's file name: Hub id, citation and, where the source is
# harmful by design, the content warning its card gets (`harmful`: a second pattern on the name).
HH_WARNING = ("the Anthropic hh-rlhf harmless and red-team data were collected by asking crowdworkers to "
              "make an assistant say harmful things; prompts and responses, the chosen ones included, contain "
              "offensive, abusive, violent, sexual and otherwise upsetting text by design.")
KNOWN_SOURCES = [
    {"pattern": r"hh[-_]?rlhf", "hub_id": "Anthropic/hh-rlhf", "harmful": r"harmless|red[-_]?team",
     "warning": HH_WARNING,
     "citation": """@article{bai2022training,
  title={Training a Helpful and Harmless Assistant with Reinforcement Learning from Human Feedback},
  author={Bai, Yuntao and Jones, Andy and Ndousse, Kamal and Askell, Amanda and Chen, Anna and DasSarma, Nova
          and Drain, Dawn and Fort, Stanislav and Ganguli, Deep and Henighan, Tom and others},
  journal={arXiv preprint arXiv:2204.05862},
  year={2022}
}"""},
    {"pattern": r"self[-_]?instruct", "hub_id": "yizhongw/self_instruct", "harmful": None, "warning": None,
     "citation": """@inproceedings{wang2023selfinstruct,
  title={Self-Instruct: Aligning Language Models with Self-Generated Instructions},
  author={Wang, Yizhong and Kordi, Yeganeh and Mishra, Swaroop and Liu, Alisa and Smith, Noah A.
          and Khashabi, Daniel and Hajishirzi, Hannaneh},
  booktitle={Proceedings of the 61st Annual Meeting of the Association for Computational Linguistics},
  year={2023}
}"""},
]
# A recipe marks its own input as harmful by saying so in its description.
CONTENT_WARNING_FLAG = re.compile(r"content[ -]warning\s*:?\s*(.*)", re.I | re.S)
COLUMN_DOCS = {
    "pair_id": "id of the pair (content-derived, stable across versions)",
    "conversation_id": "id of the ingested conversation the pair descends from",
    "prompt": "the conversation up to the responses",
    "chosen": "the preferred response",
    "rejected": "the other response",
    "score_chosen": "annotator's score of the chosen response (null: no scores)",
    "score_rejected": "annotator's score of the rejected response (null: no scores)",
    "score_margin": "score_chosen - score_rejected, the annotator's raw difference (null: no scores)",
    "margin": "preference strength on a logit scale, as TRL's RewardTrainer reads it (0: no scores)",
    "chosen_model": "model that wrote the chosen response (null: the source's)",
    "rejected_model": "model that wrote the rejected response (null: the source's)",
    "chosen_origin": "source, on_policy (generated) or off_policy (the source's answer)",
    "rejected_origin": "source, on_policy or off_policy",
    "annotator": "annotator that scored the pair",
    "pair_rule": "rule that formed the pair (source, best_vs_worst, ...)",
    "source": "input file the conversation was read from",
    "source_row": "row of that input file",
    "metadata": "JSON: filter scores (length, CHES, ...) and other provenance",
}


def size_category(n: int) -> str:
    """The Hub's size_categories value for n rows."""
    return next((label for limit, label in SIZE_CATEGORIES if n < limit), "n>1T")


def esc(value: object) -> str:
    """Data text for Markdown: no raw HTML, one line, safe inside a table cell."""
    text = html.escape(str(value), quote=False)
    return re.sub(r"\s+", " ", text).replace("|", "\\|").strip()


def fence(text: str, lang: str = "") -> str:
    """A code block whose fence is longer than any backtick run inside it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text}\n{ticks}"


def _table(header: list[str], rows: list[list], align: str | None = None) -> str:
    align = align or "|".join("---" if i == 0 else "---:" for i in range(len(header)))
    return "\n".join([f"| {' | '.join(header)} |", f"|{align}|"] +
                     [f"| {' | '.join(str(c) for c in r)} |" for r in rows])


# --- sources, licences, content warnings ------------------------------------------------------

def known_source(path: str) -> dict | None:
    name = Path(path).name.lower()
    return next((s for s in KNOWN_SOURCES if re.search(s["pattern"], name)), None)


def source_datasets(manifest: dict) -> list[str]:
    """Hub ids of the recognised inputs; "original" for inputs that are not a known public dataset."""
    ids = [(s["hub_id"] if (s := known_source(i["path"])) else "original") for i in manifest.get("inputs", [])]
    return sorted(set(ids)) or ["original"]


def content_warnings(manifest: dict) -> list[str]:
    """Why the data may be harmful: one warning per input from a source known to be harmful by
    design (by file name), and the recipe's own when its description says "content warning"."""
    out = []
    for i in manifest.get("inputs", []):
        s = known_source(i["path"])
        if s and s["harmful"] and re.search(s["harmful"], Path(i["path"]).name.lower()):
            out.append(f"input {Path(i['path']).name} ({s['hub_id']}): {s['warning']}")
    flag = CONTENT_WARNING_FLAG.search(manifest["recipe"].get("description") or "")
    if flag:
        out.append(f"the recipe says: {flag.group(1).strip() or 'this data may be harmful.'}")
    return out


def dataset_licence(manifest: dict) -> str:
    licences = sorted({i["license"] for i in manifest.get("inputs", []) if i.get("license")})
    return manifest["recipe"]["output"].get("license") or (licences[0].lower() if len(licences) == 1 else "other")


def config_name(manifest: dict) -> str:
    """NAME-vNNNN-DIGEST, DIGEST from the data files' checksums (the build key without them)."""
    files = {k: f["sha256"] for k, f in (manifest.get("files") or {}).items() if k.startswith("data/")}
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12] if files \
        else (manifest.get("build_key") or "nodata")[-12:]
    return f"{manifest['name']}-{manifest['version']}-{digest}"


# --- YAML metadata ------------------------------------------------------------------------------

def data_schema(version_dir: Path):
    files = sorted((Path(version_dir) / "data").glob("*.parquet"))
    return pq.read_schema(files[0]) if files else PAIR


def dataset_info(version_dir: Path, rows: int) -> DatasetInfo:
    """`datasets.DatasetInfo` of the version: features from its Parquet schema, one train split
    (num_bytes: the uncompressed Parquet size), download size: the files' bytes."""
    from datasets import DatasetInfo, Features, SplitDict, SplitInfo

    files = sorted((Path(version_dir) / "data").glob("*.parquet"))
    metas = [pq.read_metadata(f) for f in files]
    size = sum(m.row_group(i).total_byte_size for m in metas for i in range(m.num_row_groups))
    return DatasetInfo(features=Features.from_arrow_schema(data_schema(version_dir)),
                       splits=SplitDict({"train": SplitInfo("train", num_bytes=size, num_examples=rows)}),
                       download_size=sum(f.stat().st_size for f in files), dataset_size=size)


def card_data(manifest: dict, stats: dict, version_dir: Path) -> DatasetCardData:
    """The card's YAML metadata (the Hub's dataset-card spec)."""
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    recipe = manifest["recipe"]
    languages = stats["languages"]["languages"]
    scored = recipe.get("annotate") is not None
    config = config_name(manifest)
    data = DatasetCardData(
        language=languages or None,
        license=dataset_licence(manifest),
        annotations_creators=["machine-generated"] if scored else ["found"],
        language_creators=["found", "machine-generated"] if recipe.get("generate") else ["found"],
        multilinguality=(["multilingual"] if len(languages) > 1 else ["monolingual"]) if languages else None,
        size_categories=[size_category(manifest["rows"])],
        source_datasets=source_datasets(manifest),
        task_categories=["text-generation"],
        pretty_name=f"{manifest['name']} {manifest['version']}",
        tags=["dpo", "preference", "prefpipe"],
        configs=[{"config_name": config, "data_files": [{"split": "train", "path": "data/*.parquet"}],
                  "default": True}],
    )
    DatasetInfosDict({config: dataset_info(version_dir, manifest["rows"])}).to_dataset_card_data(data)
    return data


# --- sections -----------------------------------------------------------------------------------

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


def funnel_summary(manifest: dict, stats: dict) -> str:
    checks = funnel_checks(manifest, stats)
    if checks:
        return "**The counts do not add up:**\n" + "\n".join("- " + esc(c) for c in checks)
    inc = manifest.get("incremental")
    carried = (f" plus the {inc.get('parent_rows_carried', 0)} rows carried over from the parent version "
               f"(incremental build)") if inc else ""
    return ("Every count adds up: each stage's rows in = rows out + dropped, drop reasons sum to the drops, "
            f"each stage reads what the one before wrote, the last stage's output{carried} is the "
            f"{stats['rows']} rows in `data/`, and `dropped/` holds exactly the funnel's drops.")


def _kv(section: dict, keys: list[str]) -> str:
    """A manifest section as a two-column table: `keys` first, then the rest; nested dicts flattened."""
    items = dict(flat_items(section))
    rows = [[esc(k), esc(items.pop(k, NOT_RECORDED))] for k in keys]
    return _table(["", "value"], rows + [[esc(k), esc(v)] for k, v in items.items()], "---|---")


def models_section(manifest: dict, stats: dict) -> str:
    rows = [[role, esc(model) if model else NOT_RECORDED] for role, model in model_rows(manifest)]
    named = ", ".join(f"`{esc(x)}`" for x in stats["models_in_data"]) or "none"
    annotators = ", ".join(f"`{esc(x)}`" for x in stats["annotators"]) or "none"
    return (_table(["role", "model"], rows, "---|---") +
            f"\n\nModels named in the pairs: {named}. Annotators: {annotators}.")


def distribution_table(summaries: dict) -> str:
    return _table(["column", "count", "missing"] + SUMMARY_KEYS, summary_rows(summaries))


def scores_section(stats: dict) -> str:
    d = stats["distributions"]
    if not d["score_chosen"]["count"] and not d["score_rejected"]["count"]:
        margin = d["margin"]
        constant = f"; `margin` is {fmt_num(margin['min'])} for every pair" \
            if margin["count"] and margin["min"] == margin["max"] else ""
        return ("Scores and margins: not recorded: the pairs carry no scores (e.g. pairs taken from the "
                f"source's own chosen/rejected labels){constant}.")
    return distribution_table(d)


def ches_section(manifest: dict, stats: dict) -> str:
    line = ches_sentence(manifest, stats)
    key = stats["ches_score"]
    tables = {key: stats["ches"], f"{key} (dropped)": stats["ches_dropped"]}
    return line + ("\n\n" + distribution_table(tables) if stats["ches"]["count"] else "")


def gold_agreement(manifest: dict) -> str:
    """The annotator's agreement with human labels (`annotator_eval`, an eval-annotator report)."""
    ev = manifest.get("annotator_eval")
    if not ev:
        if manifest["recipe"].get("annotate") is None:
            return ("Not applicable: the pairs keep the source's own labels; no model annotated them.")
        return ("Not measured for this build. Measure the recipe's annotator with `prefpipe eval-annotator "
                "RECIPE --gold FILE` before trusting its labels." + safety_head_sentence(manifest))
    m = (ev.get("variants") or {}).get(ev.get("configured_variant"), ev)
    acc = next((m[k] for k in ("accuracy_excluding_ties", "accuracy", "agreement") if m.get(k) is not None), None)
    ci = (m.get("ci95") or {}).get("accuracy_excluding_ties") or [None, None]
    gold = ev.get("gold") or {}
    who = f"The annotator `{esc(ev['annotator'])}`" if ev.get("annotator") else "The annotator"
    interval = f" (95% CI {percent(ci[0])} to {percent(ci[1])})" if ci[0] is not None else ""
    share = percent(acc) if acc is not None else "an unrecorded share"
    parts = [f"{who} agreed with human labels on {share} of the gold pairs{interval}"]
    if m.get("cohen_kappa") is not None:
        parts.append(f"Cohen's kappa {fmt_num(m['cohen_kappa'])}")
    pairs = m.get("pairs") or gold.get("pairs")
    if pairs:
        parts.append(f"over {pairs} pairs" + (f" of `{esc(Path(gold['path']).name)}`" if gold.get("path") else ""))
    text = "; ".join(parts) + "."
    if ev.get("safety_head_pairs") is not None:
        k = ev["safety_head_pairs"]
        text += (f" The safety head's router sent all {k} gold pairs to the head, so this measures the head alone."
                 if k == pairs else f" The safety head's router sent {k} of these {pairs} gold pairs to the "
                 f"head; {routed_scorer(manifest)} scored the rest.")
    if (verdict := (ev.get("verdict") or {}).get("sentence")):
        text += " " + esc(verdict)
    if (fit := manifest.get("annotator_fit")):
        w = fit["weights"]
        terms = ", ".join(f"`{esc(f)}` {c:+.2f}" for f, c in zip(w["features"], w["coefficients"]))
        text += (f" The annotator is an ensemble: standardised scores combined with weights fitted by logistic "
                 f"regression on {w['decisive_pairs']} gold pairs without a tie ({terms}"
                 + ("; the length term is dropped when scoring" if fit["configured_variant"] == "length_controlled"
                    else "") + f"); its accuracy above is out of fold ({w['folds']}-fold cross-validation).")
        if fit.get("fit_file"):
            licences = "; ".join(esc(x) for x in (fit.get("fitted_on") or {}).get("licences") or []) or "not recorded"
            text += (f" The weights were read from the fit file `{esc(fit['fit_file'])}` (fitted on "
                     f"{esc(fit['gold'].get('path', '?'))}; gold sources' licences: {licences}), not fitted in this build.")
    text += safety_head_sentence(manifest)
    if (g := ev.get("gate")):
        text += (f" The recipe's annotator gate asks for {percent(g['min_accuracy'])}: "
                 + ("passed." if g.get("passed") else "**not met; the build was forced past it (`--force`), "
                                                      "so treat these labels with suspicion.**"))
    return text


def routed_scorer(manifest: dict) -> str:
    """What scores the prompts the safety head does not: the method's own scorer."""
    method = ((manifest.get("models") or {}).get("annotator") or {}).get("method")
    return {"judge_pointwise": "the pointwise judge", "ensemble": "the ensemble"}.get(method, "the density ratio")


def safety_head_sentence(manifest: dict) -> str:
    """How the safety head took part (`models.safety_head`), with its sources' licences; or ''."""
    h = ((manifest.get("models") or {}).get("safety_head"))
    if not h:
        return ""
    fitted = h.get("fitted_on") or {}
    pairs = fitted.get("pairs") or {}
    prompts = ", ".join(f"`{esc(p['file'])}`" for p in fitted.get("ordinary_prompts") or [])
    licences = "; ".join(esc(x) for x in fitted.get("licences") or []) or "not recorded in the head file"
    return (f" On prompts that read like red-team attempts (router P >= {fmt_num(h['threshold'])}), a harmlessness "
            f"reward head on `{esc(h['embedder'])}` embeddings scored instead of {routed_scorer(manifest)}: "
            f"{h['candidates_scored']} candidates of this build. The head (`{esc(h['file'])}`) was fitted on "
            f"`{esc(pairs.get('file', '?'))}` (its held-out sample of {(pairs.get('held_out') or {}).get('limit', '?')} "
            f"pairs excluded) and its router on ordinary prompts from {prompts or 'unrecorded files'}; "
            f"sources' licences: {licences}.")


def decontam_section(manifest: dict) -> str:
    d = manifest.get("decontamination")
    if not d:
        return NOT_RECORDED.capitalize() + "."
    benchmarks = d.get("benchmarks", {})
    rows = [[esc(n), b.get("items_hit", 0), len(b.get("rows") or [])] for n, b in sorted(benchmarks.items())
            if b.get("items_hit") or b.get("rows")]
    if not benchmarks:
        return "No benchmarks were checked."
    if not rows:
        return f"No prompt matched any of the {len(benchmarks)} benchmarks checked ({', '.join(sorted(benchmarks))})."
    rest = len(benchmarks) - len(rows)
    return _table(["benchmark", "items hit", "rows dropped"], rows) + \
        (f"\n\nNo hits in the other {rest} benchmarks checked." if rest else "")


def dedup_section(manifest: dict) -> str:
    d = manifest.get("dedup")
    if not d:
        return NOT_RECORDED.capitalize() + "."
    return _table(["kind", "rows dropped"], [[k, d.get(k, NOT_RECORDED)] for k in ("exact", "near", "semantic")])


def lengths_section(stats: dict) -> str:
    if not stats["rows"]:
        return "No pairs, no lengths."
    return "Characters per side (all messages):\n\n" + distribution_table(stats["lengths"])


def inputs_section(manifest: dict) -> str:
    rows = [[f"`{esc(Path(i['path']).name)}`", esc(i["format"]), esc(i.get("license") or "unknown"),
             i.get("max_rows") or "all", esc(s["hub_id"]) if (s := known_source(i["path"])) else "local file",
             f"`{i['sha256'][:16]}…`"] for i in manifest.get("inputs", [])]
    return _table(["input", "format", "licence", "rows read", "public dataset", "sha256"], rows,
                  "---|---|---|---|---|---")


def structure_section(version_dir: Path) -> str:
    def kind(t) -> str:
        if str(t).startswith("list<") and "struct<role" in str(t):
            return "list of {role, content} messages"
        return str(t)

    schema = data_schema(version_dir)
    return _table(["column", "type", "meaning"],
                  [[f"`{f.name}`", kind(f.type), esc(COLUMN_DOCS.get(f.name, ""))] for f in schema], "---|---|---")


def languages_line(stats: dict) -> str:
    lang = stats["languages"]
    if not lang["languages"]:
        return (f"not detected (none of the {lang['prompts_checked']} prompts checked is in a language the "
                "simple script and stopword detector knows)")
    names = ", ".join(f"{LANGUAGE_NAMES.get(c, c)} (`{c}`)" for c in lang["languages"])
    counts = ", ".join(f"{c}: {n}" for c, n in lang["counts"].items())
    return f"{names}, detected from the user turns of {lang['prompts_checked']} prompts ({counts})"


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


def citation_section(manifest: dict) -> str:
    cites = sorted({s["citation"] for i in manifest.get("inputs", []) if (s := known_source(i["path"]))})
    if not cites:
        return ("No published source is recognised among the inputs (local files): cite their authors as "
                "their licences ask.")
    return "Cite the source data:\n\n" + fence("\n\n".join(cites), "bibtex")


def bias_section(manifest: dict, stats: dict, warnings_: list[str]) -> str:
    lines = [length_bias_sentence(stats), position_bias_sentence(manifest), *self_preference_sentences(manifest)]
    lines += [f"Content: {w}" for w in warnings_]
    lines.append("Annotator noise: scores from small models are noisy; see the agreement with human labels above."
                 if manifest["recipe"].get("annotate") else
                 "Label noise: the pairs keep the source's own labels, with whatever disagreement its annotators had.")
    if manifest["rows"] < 1000:
        lines.append(f"Size: {manifest['rows']} pairs is enough to test a training setup, not to train a robust model.")
    return "\n".join(f"- {esc(line)}" for line in lines)


def render_card(manifest: dict, stats: dict, df, change: dict | None, warnings: list[str],
                version_dir: Path) -> str:
    """README.md: `DatasetCardData` YAML, then the sections of the Hub's dataset-card template."""
    from huggingface_hub import DatasetCard

    name, version = manifest["name"], manifest["version"]
    recipe_yaml = yaml.safe_dump(relative_recipe(manifest, version_dir), sort_keys=False, allow_unicode=True).strip()
    description = esc(manifest["recipe"].get("description") or "A preference dataset built by prefpipe.")
    jr = manifest.get("judge_reliability")
    harmful = content_warnings(manifest)
    data = card_data(manifest, stats, version_dir)
    config = config_name(manifest)
    body = f"""# Dataset Card for {esc(name)} {version}

{description}

This version holds **{stats['rows']}** pairs in TRL's conversational preference format (`prompt`,
`chosen`, `rejected` as lists of `{{role, content}}` messages) with `score_chosen`, `score_rejected`,
`margin` and provenance columns (`pair_id`, models, annotator, source file and row, `metadata`).
**{stats['rows_dropped']}** rows were dropped on the way; each is in `dropped/` with its stage and reason.
Created {manifest['created_at']}. Plots and a sample of pairs: [report.html](report.html).

{chr(10).join(f"> **Content warning:** {esc(w)}" + chr(10) for w in harmful)}
{chr(10).join(f"> **Warning:** {esc(w)}" + chr(10) for w in warnings)}
## Dataset Details

### Dataset Description

- **Curated by:** prefpipe, code version `{manifest['code_version']}`, build key `{manifest.get('build_key', NOT_RECORDED)}`
- **Language(s):** {languages_line(stats)}
- **License:** `{esc(dataset_licence(manifest))}`; check the inputs' licences below (and the terms of any model
  whose outputs are included) before redistributing.
- **Configuration:** `{config}`, one split `train` (named after this version's data, so the `datasets`
  cache never mixes versions)

### Dataset Sources

{inputs_section(manifest)}

## Uses

### Direct Use

Preference tuning (DPO, IPO, SimPO with TRL's `DPOTrainer`), reward-model training (`RewardTrainer` reads
`chosen`, `rejected` and `margin`), and research on how preference data is curated.

{fence(f'''from datasets import load_dataset
ds = load_dataset("path/to/this/version", split="train")   # config {config}: data/*.parquet

import polars as pl
df = pl.read_parquet("path/to/this/version/data/*.parquet")''', "python")}

Train with TRL's `DPOTrainer` (it reads `prompt`, `chosen`, `rejected`):

{fence('''from trl import DPOConfig, DPOTrainer
train = ds.select_columns(["prompt", "chosen", "rejected"])
trainer = DPOTrainer(model=model, args=DPOConfig(output_dir="dpo-out"),
                     train_dataset=train, processing_class=tokenizer)
trainer.train()''', "python")}

### Out-of-Scope Use

Not an evaluation benchmark (the prompts are training data, decontaminated against benchmarks only as the
Decontamination section says), not a source of verified facts (a chosen response is preferred, not checked
to be correct){", and not a source of text to imitate: its harmful content is there so models learn to refuse it" if harmful else ""}.

## Dataset Structure

{structure_section(version_dir)}

## Dataset Creation

### Curation Rationale

{description}

### Source Data

#### Data Collection and Processing

Rebuild {rebuild(manifest, version_dir)[0]}; the same recipe, inputs and code give the same
build key `{manifest.get('build_key', '-')}`:

{fence(rebuild(manifest, version_dir)[1], 'sh')}

Schema version {manifest['schema_version']}, recipe hash `{manifest['recipe_hash']}`; the recipe, paths
relative to {"its directory" if recipe_anchored(manifest) else "the data root"}:

{fence(recipe_yaml, 'yaml')}

### Models

{models_section(manifest, stats)}

### Funnel

{funnel_table(manifest.get('funnel', []))}

Rows in `dropped/` by stage and reason:

{dropped_section(stats)}

{funnel_summary(manifest, stats)}

### Decontamination

{decontam_section(manifest)}

### Deduplication

{dedup_section(manifest)}

### Annotations

#### Scores and margins

{scores_section(stats)}

{ches_section(manifest, stats)}

#### Judge reliability

{_kv(jr, ["flip_rate", "first_position_win_rate", "longer_response_win_rate"]) if jr else NOT_RECORDED.capitalize() + "."}

#### Agreement with human labels

{gold_agreement(manifest)}

{human_audit_paragraph(version_dir, manifest)}

### Personal and Sensitive Information

prefpipe does not detect or remove personal information; the prompts and responses are as the inputs
and models wrote them.

## Bias, Risks, and Limitations

{bias_section(manifest, stats, harmful)}

### Lengths

{lengths_section(stats)}

### Recommendations

Read the sample in [report.html](report.html) before training; weigh the length bias above (a length
guard or length-normalised loss counters it); keep the licences of the inputs.

## Citation

{citation_section(manifest)}

## More Information

### Parent version and what changed

{parent_section(manifest, change)}

### Sample

{sample_section(df)}
"""
    body = re.sub(r"\n{3,}", "\n\n", body)
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


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
    stats = version_stats(version_dir, df, manifest)
    change = parent_change(version_dir, manifest)
    recorded = [str(w) for w in manifest.get("warnings") or []]
    return {"README.md": render_card(manifest, stats, df, change, recorded, Path(version_dir)),
            "report.html": render_report(manifest, stats, df, recorded + funnel_checks(manifest, stats), change,
                                         rebuild(manifest, version_dir), content_warnings(manifest),
                                         human_audit=human_audit_paragraph(version_dir, manifest).replace("`", ""))}


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
