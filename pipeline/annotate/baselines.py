"""Trivial baselines for eval-annotator, on the annotator's own gold pairs: the longer response
wins, the shorter response wins, the first position (response A) wins and, when the recipe has a
length guard (`filters.length.max_ratio`), the annotator's verdicts as that guard leaves them.

Each has the report's accuracy (gold ties excluded; a predicted tie or a failure counts as wrong),
Cohen's kappa and the paired bootstrap interval of annotator - baseline: both on the same resampled
pair indices (`eval.resample_indices`, the report's seed), so the errors they share cancel. The
same per category of the gold file (`GoldPair.group`). `verdict` says in one sentence whether the
annotator's configured variant beats the best trivial baseline with that interval above 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pipeline.annotate.eval import (_accuracy, _fmt, _score_verdicts, bootstrap_ci, difference_resampled,
                                    full_sample, metrics, resample_indices)
from pipeline.annotate.gold import GoldPair
from pipeline.filters.length import LengthConfig, too_long

TRIVIAL = {"longer_response": "longer response", "shorter_response": "shorter response",
           "first_position": "first position (response A)"}
GUARDED = "length_guarded"
SUMMARY = ("accuracy_excluding_ties", "accuracy_including_ties", "decisive_accuracy", "cohen_kappa", "predicted",
           "ci95")


def trivial_verdicts(pairs: list[GoldPair]) -> dict[str, list[str]]:
    """Each trivial baseline's verdict per pair (lengths in characters; equal lengths tie)."""
    longer = _score_verdicts([len(p.response_a) for p in pairs], [len(p.response_b) for p in pairs], 0)
    swap = {"a": "b", "b": "a", "tie": "tie"}
    return {"longer_response": longer, "shorter_response": [swap[v] for v in longer],
            "first_position": ["a"] * len(pairs)}


def guarded_verdicts(verdicts: list[str], pairs: list[GoldPair], guard: LengthConfig) -> list[str]:
    """`verdicts` as the length guard leaves them: a pair whose winner is more than `max_ratio`
    times as long as the loser (`filters.length`'s rule) is dropped, i.e. gives no preference (tie)."""
    out = []
    for v, p in zip(verdicts, pairs):
        if v in ("a", "b"):
            chosen, rejected = (p.response_a, p.response_b) if v == "a" else (p.response_b, p.response_a)
            if too_long(chosen, rejected, guard):
                v = "tie"
        out.append(v)
    return out


def recipe_length_guard(path: str | Path) -> LengthConfig | None:
    """The recipe's `filters.length` when it drops pairs (`max_ratio` set), else None."""
    from pydantic import ValidationError

    from pipeline.config import format_error
    from pipeline.recipe import RecipeError, load_yaml

    try:
        data = load_yaml(Path(path).read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"{path}: cannot read recipe: {err}") from None
    filters = data.get("filters") if isinstance(data, dict) else None
    section = filters.get("length") if isinstance(filters, dict) else None
    if section is None:
        return None
    try:
        guard = LengthConfig.model_validate(section)
    except ValidationError as err:
        raise RecipeError(format_error(str(path), err, "filters.length")) from None
    return guard if guard.max_ratio is not None else None


def _none(x: float | None) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


def _difference(gold: np.ndarray, pred: np.ndarray, base: np.ndarray, idx: np.ndarray | None) -> dict:
    """annotator - baseline accuracy (gold ties excluded) with its paired 95% interval."""
    return {"difference": _none(difference_resampled(gold, pred, base, full_sample(len(gold)))[0]),
            "ci95": bootstrap_ci(lambda i: difference_resampled(gold, pred, base, i), idx)}


def compare_with_baselines(annotator: str, pairs: list[GoldPair], variants: Mapping[str, list[str]],
                           configured: str, guard: LengthConfig | None = None, resamples: int = 1000,
                           seed: int = 0) -> dict:
    """{"baselines": ..., "verdict": ...} for the report: every variant against every trivial
    baseline; the configured variant also against its length-guarded self and per category."""
    gold = np.asarray([p.label for p in pairs], object)
    la, lb = [len(p.response_a) for p in pairs], [len(p.response_b) for p in pairs]
    idx = resample_indices(len(pairs), resamples, seed)
    verdicts = {k: np.asarray(v, object) for k, v in trivial_verdicts(pairs).items()}

    def summary(pred: list[str]) -> dict:
        m = metrics(gold.tolist(), pred, la, lb, resamples, seed)  # same seed and n: the same draws
        return {k: m[k] for k in SUMMARY}

    out: dict = {"accuracy": "gold ties excluded; a predicted tie or a failure counts as wrong",
                 "lengths": "characters", "resamples": resamples, "seed": seed,
                 "trivial": {k: {"label": TRIVIAL[k], **summary(v.tolist())} for k, v in verdicts.items()}}
    differences = {name: {k: _difference(gold, np.asarray(pred, object), v, idx) for k, v in verdicts.items()}
                   for name, pred in variants.items()}
    mine = np.asarray(variants[configured], object)
    if guard is not None and guard.max_ratio is not None:
        guarded = guarded_verdicts(variants[configured], pairs, guard)
        verdicts[GUARDED] = np.asarray(guarded, object)
        out["length_guarded"] = {
            "label": f"{configured} + length guard", "variant": configured, "max_ratio": guard.max_ratio,
            "unit": guard.unit, "dropped": sum(a != b for a, b in zip(guarded, variants[configured])),
            **summary(guarded)}
        differences[configured][GUARDED] = _difference(gold, mine, verdicts[GUARDED], idx)
    out["differences"] = differences
    best = max(TRIVIAL, key=lambda b: -1.0 if (a := out["trivial"][b]["accuracy_excluding_ties"]) is None else a)
    out["best_trivial"] = best
    groups = [p.group for p in pairs]
    if any(g is not None for g in groups):
        out["by_group"] = {}
        for name in sorted(set(groups), key=lambda g: (g is None, str(g))):
            sel = np.asarray([g == name for g in groups])
            g_idx = resample_indices(int(sel.sum()), resamples, seed)
            out["by_group"]["(none)" if name is None else name] = {
                "pairs": int(sel.sum()), "annotator": _none(_accuracy(gold[sel], mine[sel], True)),
                "baselines": {b: _none(_accuracy(gold[sel], v[sel], True)) for b, v in verdicts.items()},
                "differences": {b: _difference(gold[sel], mine[sel], v[sel], g_idx) for b, v in verdicts.items()}}
    accuracy = _none(_accuracy(gold, mine, True))
    return {"baselines": out, "verdict": verdict(annotator, configured, accuracy, best,
                                                 out["trivial"][best]["accuracy_excluding_ties"],
                                                 differences[configured][best], int((gold != "tie").sum()))}


def verdict(annotator: str, variant: str, accuracy: float | None, baseline: str,
            baseline_accuracy: float | None, diff: dict, counted: int) -> dict:
    """Whether `variant` beats the best trivial baseline (paired 95% interval above 0), as data and
    as one sentence."""
    d, (lo, hi) = diff["difference"], diff["ci95"]
    beats = lo is not None and lo > 0
    subject = f"{annotator} ({variant}, {_fmt(accuracy)})"
    base = f"the best trivial baseline ({TRIVIAL[baseline]}, {_fmt(baseline_accuracy)})"
    if d is None:
        sentence = f"{subject} cannot be compared with {base}: no gold pair without a tie."
    elif lo is None:
        sentence = f"{subject} does not beat {base}: {d:+.3f}, no confidence interval ({counted} pairs)."
    else:
        sentence = (f"{subject} {'beats' if beats else 'does not beat'} {base}{' by' if beats else ':'} "
                    f"{_diff(diff)} (paired bootstrap 95% CI, {counted} pairs without a gold tie).")
    return {"variant": variant, "annotator_accuracy": accuracy, "baseline": baseline,
            "baseline_accuracy": baseline_accuracy, "difference": d, "ci95": [lo, hi],
            "beats_best_trivial_baseline": beats, "sentence": sentence}


def _diff(d: dict) -> str:
    """`+0.040 [0.010, 0.070]`: a difference and its interval."""
    if d["difference"] is None:
        return "-"
    lo, hi = d["ci95"]
    return f"{d['difference']:+.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def to_markdown(report: dict) -> list[str]:
    """The report's baselines section (Markdown lines)."""
    b, v = report["baselines"], report["verdict"]
    me, best = v["variant"], b["best_trivial"]
    rows = [(m["label"], m, b["differences"][me][k]) for k, m in b["trivial"].items()]
    names = list(b["trivial"])
    if "length_guarded" in b:
        g = b["length_guarded"]
        rows.append((f"{g['label']} (max_ratio {g['max_ratio']:g}, {g['unit']}; {g['dropped']} dropped)", g,
                     b["differences"][me][GUARDED]))
        names.append(GUARDED)
    header = ["baseline", "acc. excl. ties [95% CI]", "acc. incl. ties", "decisive acc.", "Cohen's kappa",
              f"{me} - baseline [95% CI]"]
    lines = ["", "## Against trivial baselines", "", f"**{v['sentence']}**", "",
             f"The annotator's pairs; lengths in {b['lengths']}. Accuracy: {b['accuracy']}; decisive acc.: "
             "pairs with a decided verdict only (a pair the length guard drops is a tie). Differences: "
             f"annotator - baseline, paired (both on the same {b['resamples']} bootstrap resamples of the "
             f"pairs, seed {b['seed']}).", "", _row(header), _row(["---"] * len(header))]
    lines += [_row([label, _fmt(m["accuracy_excluding_ties"], m["ci95"]["accuracy_excluding_ties"]),
                    _fmt(m["accuracy_including_ties"]), _fmt(m["decisive_accuracy"]), _fmt(m["cohen_kappa"]),
                    _diff(d)]) for label, m, d in rows]
    lines += ["", _row(["variant"] + [f"- {TRIVIAL[k]}" for k in TRIVIAL]), _row(["---"] * (len(TRIVIAL) + 1))]
    lines += [_row([name] + [_diff(d[k]) for k in TRIVIAL]) for name, d in b["differences"].items()]
    if "by_group" in b:
        header = ["category", "pairs", me] + [TRIVIAL.get(k, "length guarded") for k in names] \
            + [f"{me} - {TRIVIAL[best]} [95% CI]"]
        lines += ["", f"### By category ({me})", "", _row(header), _row(["---"] * len(header))]
        lines += [_row([group, m["pairs"], _fmt(m["annotator"])] + [_fmt(m["baselines"][k]) for k in names]
                       + [_diff(m["differences"][best])]) for group, m in b["by_group"].items()]
    return lines
