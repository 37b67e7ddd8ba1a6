"""The human audit of a published version: its reviewers' labels against the published pair
direction, overall (version-weighted and raw), per stratum and per source, and between reviewers.
`human_audit` is what `prefpipe review --report`, the review page's summary and the data card
(`prefpipe card`) show; None until someone has labelled a pair of the version.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipeline.names import parse_version
from pipeline.publish.store import dataset_dir, read_manifest, version_name
from pipeline.review.agreement import (Judged, consensus, direction_agreement, reviewer_agreement,
                                       weighted_accuracy)
from pipeline.review.records import active_labels, label_files, read_records
from pipeline.review.sample import stratify


def _version(version: str | int) -> str:
    return version_name(version if isinstance(version, int) else parse_version(str(version)))


def human_audit(root: str | Path, dataset: str, version: str | int, resamples: int = 1000,
                seed: int = 0, reviewer: str | None = None) -> dict | None:
    """The audit of DATA_ROOT's `dataset`@`version` (`v3`, `v0003` or 3), or None when no pair of it
    has a label; `reviewer` keeps that reviewer's labels only."""
    version = _version(version)
    return audit_version(dataset_dir(Path(root), dataset) / version, Path(root), dataset, version,
                         resamples, seed, reviewer)


def labels_by_reviewer(root: Path, dataset: str, version: str, known: set[str] | None = None,
                       reviewer: str | None = None) -> tuple[dict[str, dict[str, str]], dict[str, int], int]:
    """({reviewer: {pair_id: chosen | rejected | tie}}, {reviewer: skips}, unreadable lines) from the
    label files; pairs outside `known` (when given) are ignored."""
    labels: dict[str, dict[str, str]] = {}
    skips: dict[str, int] = {}
    unreadable = 0
    for path in label_files(root, dataset, version):
        records, bad = read_records(path)
        unreadable += bad
        for label in active_labels(records).values():
            if (known is not None and label.pair_id not in known) or (reviewer and label.reviewer != reviewer):
                continue
            if label.preferred is None:
                skips[label.reviewer] = skips.get(label.reviewer, 0) + 1
            else:
                labels.setdefault(label.reviewer, {})[label.pair_id] = label.preferred
    return labels, skips, unreadable


def _group(items: list[Judged], resamples: int, seed: int, population: int | None = None) -> dict:
    out = direction_agreement(items, resamples, seed)
    return out if population is None else {"population": population, **out}


def audit_version(version_dir: Path, root: Path, dataset: str, version: str, resamples: int = 1000,
                  seed: int = 0, reviewer: str | None = None) -> dict | None:
    """`human_audit` of a version directory (the card calls it on a version being published)."""
    if not label_files(root, dataset, version):
        return None
    strata = {s.pair_id: s for s in stratify(version_dir, read_manifest(version_dir))}
    labels, skips, unreadable = labels_by_reviewer(root, dataset, version, set(strata), reviewer)
    per_pair: dict[str, list[str]] = {}
    for by_pair in labels.values():
        for pair_id, preferred in by_pair.items():
            per_pair.setdefault(pair_id, []).append(preferred)
    if not per_pair:
        return None
    items = [Judged(p, consensus(v), strata[p].stratum, strata[p].source, strata[p].length_chosen,
                    strata[p].length_rejected) for p, v in sorted(per_pair.items())]
    population = Counter(s.stratum for s in strata.values())
    weighted, weighted_ci = weighted_accuracy(items, population, resamples, seed)
    by = lambda key: {k: [j for j in items if key(j) == k]  # noqa: E731
                      for k in sorted({key(j) for j in items}, key=str)}
    return {
        "dataset": dataset, "version": version,
        "reviewers": sorted(labels), "labels": sum(len(v) for v in labels.values()),
        "skipped": sum(skips.values()), "unreadable_lines": unreadable,
        "pairs": len(items), "version_pairs": len(strata),
        "overall": {**_group(items, resamples, seed), "accuracy_weighted": weighted,
                    "accuracy_weighted_ci95": weighted_ci},
        "strata": {k: _group(v, resamples, seed, population[k]) for k, v in by(lambda j: j.stratum).items()},
        "sources": {str(k): _group(v, resamples, seed) for k, v in by(lambda j: j.source).items()},
        "inter_reviewer": reviewer_agreement(labels, resamples, seed),
    }


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def headline(audit: dict) -> str:
    """`human audit: 100 pairs, 0.83 [0.75, 0.90]`: the version-weighted accuracy and its CI."""
    o = audit["overall"]
    lo, hi = o["accuracy_weighted_ci95"]
    ci = f" [{_num(lo)}, {_num(hi)}]" if lo is not None else ""
    return f"human audit: {audit['pairs']} pairs, {_num(o['accuracy_weighted'])}{ci}"


def audit_sentence(audit: dict | None, ref: str) -> str:
    """The card's and the report's paragraph on the human audit (`ref`: NAME@vN)."""
    if audit is None:
        return (f"Human audit: none yet. `prefpipe review {ref}` serves a sample of pairs for people to "
                f"label; `prefpipe card {ref}` then adds their agreement here.")
    o = audit["overall"]
    who = ", ".join(audit["reviewers"])
    kappa = o["cohen_kappa"]
    klo, khi = o["ci95"]["cohen_kappa"]
    parts = [f"H{headline(audit)[1:]}: the share of pairs a person labelled (by {who}) where they "
             f"preferred the published chosen response, human ties excluded ({o['human_ties']}), weighted to "
             f"this version's strata, with its 95% bootstrap CI",
             f"unweighted {_num(o['accuracy_excluding_ties'])}",
             f"Cohen's kappa {_num(kappa)}" + (f" [{_num(klo)}, {_num(khi)}]" if klo is not None else "")]
    for pair in audit["inter_reviewer"]:
        parts.append(f"reviewers {' and '.join(pair['reviewers'])} agreed on {_num(pair['agreement'])} of "
                     f"{pair['pairs']} common pairs (kappa {_num(pair['cohen_kappa'])})")
    return "; ".join(parts) + f". Per stratum and source: `prefpipe review {ref} --report`."


def card_paragraph(version_dir: Path, manifest: dict) -> str:
    """The hook `pipeline.publish.card` calls: the audit paragraph of a version (being) published."""
    root = Path(version_dir).resolve().parents[2]
    name, version = manifest["name"], manifest["version"]
    return audit_sentence(audit_version(Path(version_dir), root, name, version), f"{name}@{version}")
