"""What changed between two published versions: pairs added/removed (by `pair_id`), the funnel
per stage and reason, and the score, margin and length distributions."""

from __future__ import annotations

from pathlib import Path

from pipeline.publish.store import read_manifest
from pipeline.publish.version_stats import DISTRIBUTIONS, LENGTHS, fmt_num as _num, pairs_frame, version_stats

FUNNEL_FIELDS = ("rows_in", "rows_out", "rows_dropped", "outputs_written")


def pair_ids(version_dir: Path) -> set[str]:
    return set(pairs_frame(version_dir, ["pair_id"])["pair_id"].to_list())


def funnel_changes(funnel_a: list[dict], funnel_b: list[dict]) -> list[dict]:
    """Per stage (in pipeline order, stages of either side): counts before/after and per-reason drops."""
    a = {s["stage"]: s for s in funnel_a}
    b = {s["stage"]: s for s in funnel_b}
    order = [s["stage"] for s in funnel_a] + [s["stage"] for s in funnel_b if s["stage"] not in a]
    out = []
    for stage in order:
        sa, sb = a.get(stage, {}), b.get(stage, {})
        reasons = sorted(set(sa.get("reasons", {})) | set(sb.get("reasons", {})))
        out.append({
            "stage": stage,
            **{f: {"a": sa.get(f), "b": sb.get(f)} for f in FUNNEL_FIELDS},
            "reasons": {r: {"a": sa.get("reasons", {}).get(r, 0), "b": sb.get("reasons", {}).get(r, 0)}
                        for r in reasons},
        })
    return out


def diff_versions(a_dir: Path, b_dir: Path) -> dict:
    """Compare version A (older) with version B (newer)."""
    ma, mb = read_manifest(a_dir), read_manifest(b_dir)
    da, db = pairs_frame(a_dir), pairs_frame(b_dir)
    ids_a, ids_b = set(da["pair_id"].to_list()), set(db["pair_id"].to_list())
    sa, sb = version_stats(a_dir, da), version_stats(b_dir, db)
    added, removed = sorted(ids_b - ids_a), sorted(ids_a - ids_b)
    return {
        "a": f"{ma['name']}@{ma['version']}",
        "b": f"{mb['name']}@{mb['version']}",
        "rows": {"a": da.height, "b": db.height},
        "added": len(added),
        "removed": len(removed),
        "unchanged": len(ids_a & ids_b),
        "added_sample": added[:5],
        "removed_sample": removed[:5],
        "recipe_changed": ma.get("recipe_hash") != mb.get("recipe_hash"),
        "code_changed": ma.get("code_version") != mb.get("code_version"),
        "inputs_changed": sorted({i["sha256"] for i in ma.get("inputs", [])}) !=
                          sorted({i["sha256"] for i in mb.get("inputs", [])}),
        "funnel": funnel_changes(ma.get("funnel", []), mb.get("funnel", [])),
        "distributions": {c: {"a": sa["distributions"][c], "b": sb["distributions"][c]} for c in DISTRIBUTIONS}
        | {c: {"a": sa["lengths"][c], "b": sb["lengths"][c]} for c in LENGTHS}
        | {"ches": {"a": sa["ches"], "b": sb["ches"]}},
        "length_bias": {"a": sa["length_bias"]["longer_chosen_rate"],
                        "b": sb["length_bias"]["longer_chosen_rate"]},
    }


def _delta(a, b) -> str:
    if a is None or b is None:
        return "-"
    d = b - a
    return f"{d:+.4g}" if isinstance(d, float) else f"{d:+d}"


def funnel_rows(diff: dict) -> list[list[str]]:
    """Table rows: stage, field or reason, A, B, change (only rows that differ, plus stage totals)."""
    rows = []
    for s in diff["funnel"]:
        for f in FUNNEL_FIELDS:
            a, b = s[f]["a"], s[f]["b"]
            rows.append([s["stage"], f, _num(a), _num(b), _delta(a, b)])
        for r, v in s["reasons"].items():
            rows.append([s["stage"], f"dropped: {r}", _num(v["a"]), _num(v["b"]), _delta(v["a"], v["b"])])
    return rows


def distribution_rows(diff: dict) -> list[list[str]]:
    """Table rows: column, n A, n B, mean A, mean B, median A, median B."""
    rows = []
    for col, v in diff["distributions"].items():
        a, b = v["a"], v["b"]
        if not a["count"] and not b["count"]:
            rows.append([col, "0", "0", "-", "-", "-", "-"])
            continue
        rows.append([col, str(a["count"]), str(b["count"]), _num(a.get("mean")), _num(b.get("mean")),
                     _num(a.get("median")), _num(b.get("median"))])
    return rows


def markdown(diff: dict) -> str:
    """The diff as Markdown (used by the data card's "what changed" section)."""
    changed = [k for k in ("recipe", "inputs", "code") if diff[f"{k}_changed"]]
    lines = [
        f"Compared with {diff['a']}: **{diff['added']}** pairs added, **{diff['removed']}** removed, "
        f"{diff['unchanged']} unchanged (by `pair_id`); {diff['rows']['a']} → {diff['rows']['b']} rows. "
        f"Changed: {', '.join(changed) or 'nothing in recipe, inputs or code'}.",
        "",
        "| stage | count | parent | this | change |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {' | '.join(r)} |" for r in funnel_rows(diff) if r[4] not in ("+0", "-")]
    if lines[-1].startswith("|---"):
        lines.append("| (no funnel changes) | | | | |")
    lines += ["", "| column | n parent | n this | mean parent | mean this | median parent | median this |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {' | '.join(r)} |" for r in distribution_rows(diff)]
    return "\n".join(lines)

