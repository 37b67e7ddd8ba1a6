"""Fitting the ensemble annotator on gold pairs (`annotate.ensemble`) and its report.

Every gold pair's two responses are scored once by the strong and the weak model (through the
eval-annotator score cache), the ensemble is fitted (`ensemble.fit`) and its out-of-fold verdicts
are reported as eval-annotator reports them: accuracy, kappa, CIs, against the trivial baselines
(paired), per gold file. Each single feature is reported beside it (its sign as the fit found it),
so the gain of the combination is visible. Inside a build the report is kept under the work root
by content (gold bytes, the ensemble config, the models, code), so an unchanged fit runs once; it
is published as the manifest's `annotator_eval`.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pipeline.annotate import ensemble
from pipeline.annotate.config import AnnotateConfig
from pipeline.annotate.eval import build_score_cache, cached_engines, metrics, pair_routes
from pipeline.annotate.gold import GoldPair, load_gold
from pipeline.annotate.safety_head import Routes
from pipeline.atomic import replace_file
from pipeline.engines.base import Engine
from pipeline.ids import content_id
from pipeline.keys import code_version

CONFIGURED = {False: "ensemble", True: "length_controlled"}


def gold_pairs(config: AnnotateConfig) -> tuple[list[GoldPair], dict[str, int]]:
    """The pooled gold pairs of `annotate.ensemble.gold` (each file's sample; category: the file's
    name, for the per-file report) and the rows not usable, per file."""
    e = config.ensemble
    pairs, rejected = [], {}
    for path in e.gold:
        got, bad = load_gold(Path(path), e.format, e.limit, e.seed)
        pairs += [dataclasses.replace(p, category=Path(path).name) for p in got]
        rejected[Path(path).name] = len(bad)
    return pairs, rejected


def features(config: AnnotateConfig, engines: Mapping[str, Engine], pairs: list[GoldPair],
             cache_dir: Path | None = None, progress_label: str | None = None
             ) -> tuple[np.ndarray, np.ndarray, dict, Routes]:
    """(features of every response A, of every response B, the requests run and cached, the safety
    head's routes of the responses). A pair the head scores, or whose judge output did not parse,
    has a row of NaN: the ensemble is never fitted on it."""
    routes = pair_routes(config, pairs)
    responses = [r for p in pairs for r in (p.response_a, p.response_b)]
    planned = len(pairs) - sum(routes.to_head[0::2])
    with cached_engines(config, engines, planned, cache_dir, progress_label) as (cached, requests):
        scored = ensemble.score_responses(config, cached, [p.prompt for p in pairs for _ in (0, 1)],
                                          responses, routes)
    x = ensemble.matrix([s.features for s in scored], config.ensemble.features)
    return x[0::2], x[1::2], requests, routes


def fit_report(config: AnnotateConfig, engines: Mapping[str, Engine], pairs: list[GoldPair],
               cache_dir: Path | None = None, progress_label: str | None = None,
               keep_verdicts: bool = False) -> dict:
    """An eval-annotator report of the ensemble's out-of-fold verdicts on `pairs`, with its
    weights (refitted on every pair) under "weights". With a safety head the ensemble is fitted on
    the pairs its router leaves to the ensemble, and the head's verdicts stand on the others, in
    every variant (as the annotate stage scores). `keep_verdicts`: every variant's verdict per pair
    under "verdicts" (for paired comparisons of variants; a build does not keep them)."""
    from pipeline.annotate.baselines import compare_with_baselines
    from pipeline.annotate.stage import annotator_name

    e = config.ensemble
    xa, xb, requests, routes = features(config, engines, pairs, cache_dir, progress_label)
    gold = [p.label for p in pairs]
    to_head = np.asarray(routes.to_head[0::2], dtype=bool)
    own = np.flatnonzero(~to_head)
    try:
        fitted = ensemble.fit(xa[own], xb[own], [gold[i] for i in own], e.features, e.folds, e.regularization,
                              e.seed, config.tie_margin)
    except ValueError as err:
        if to_head.any():
            raise ValueError(f"{err} (the safety head's router took {int(to_head.sum())} of the "
                             f"{len(pairs)} gold pairs)") from None
        raise
    heads = np.asarray([np.nan if h is None else h for h in routes.heads], dtype=float)
    head_verdicts = ensemble.verdicts(heads[0::2] - heads[1::2], config.tie_margin)

    def with_head(own_verdicts: list[str]) -> list[str]:
        out = list(head_verdicts)
        for i, v in zip(own, own_verdicts):
            out[i] = v
        return out

    runs = {k: with_head(v) for k, v in fitted["verdicts"].items()}
    signs = dict(zip(e.features, np.sign(fitted["weights"]["coefficients"])))
    for i, name in enumerate(e.features):  # each member alone, oriented as the fit found it
        runs[f"{name} alone"] = with_head(ensemble.verdicts((xa[own, i] - xb[own, i]) * (signs[name] or 1.0)))
    la, lb = [len(p.response_a) for p in pairs], [len(p.response_b) for p in pairs]
    variants = {name: metrics(gold, v, la, lb, e.resamples, e.seed) for name, v in runs.items()}
    configured = CONFIGURED[e.length_controlled]
    name = annotator_name(config, engines)
    return {"annotator": name, "method": config.method,
            "models": {role: engines[role].model_id for role in config.roles()},
            "config": config.model_dump(mode="json"), "gold_labels": dict(Counter(gold)),
            "variants": variants, "configured_variant": configured, "weights": fitted["weights"],
            "requests": requests,
            **({"safety_head_pairs": int(to_head.sum())} if config.safety_head is not None else {}),
            **({"verdicts": runs} if keep_verdicts else {}),
            **compare_with_baselines(name, pairs, runs, configured, None, e.resamples, e.seed)}


def report_path(config: AnnotateConfig, work_root: Path) -> Path:
    """Where the fit of this configuration is kept: keyed by the annotate section as its cache keys
    see it (model identities, the bytes of the gold files, templates and safety head; not where the
    gold files lie, not the gate or the batch size, which change no score) and the code."""
    keyed = config.content_key()
    keyed["ensemble"] = {k: v for k, v in keyed["ensemble"].items() if k != "gold"}
    keyed["files"] = {k: v for k, v in keyed["files"].items() if not k.startswith("annotate.gate")}
    key = content_id("w", {k: v for k, v in keyed.items() if k not in ("gate", "batch_size")}, code_version())
    return Path(work_root) / "ensemble" / f"{key}.json"


FIT_FORMAT = "prefpipe-ensemble-fit/1"
# The annotate settings that decide what a feature means, per model role that reads them: a fit
# file serves a recipe that has the same.
SCORING_FIELDS = {"strong": ("criteria", "length_norm"),
                  "judge": ("aspects", "criteria", "expectation", "max_tokens", "rating_max", "rating_min",
                            "rationale", "reference_label", "retries", "retry_temperature", "seed",
                            "temperature", "templates", "top_logprobs")}


def fitted_for(config: AnnotateConfig) -> dict:
    """What a fit's weights are valid for: the features, each model the features read (by identity)
    and the settings that shape those models' scores (templates by their bytes)."""
    keyed, roles = config.content_key(), config.roles()
    fields = sorted({f for role in roles for f in SCORING_FIELDS.get(role, ())})
    files = {k: v for k, v in keyed["files"].items() if k.startswith("annotate.templates") and "judge" in roles}
    return {"features": list(config.ensemble.features), "length_controlled": config.ensemble.length_controlled,
            "models": {role: keyed["models"][role]["model"] for role in roles},
            **{f: keyed[f] for f in fields}, "files": files}


def read_fit(path: str) -> dict:
    """The fit report in a fit file (`write_fit`); a malformed file raises ValueError naming the file
    and the field."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable ensemble fit file ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FIT_FORMAT:
        raise ValueError(f"{path}: format must be {FIT_FORMAT!r}")
    w = data.get("weights")
    if not isinstance(w, dict) or not all(isinstance(w.get(k), list) for k in ("features", "coefficients", "scales")) \
            or not len(w["features"]) == len(w["coefficients"]) == len(w["scales"]):
        raise ValueError(f"{path}: weights must have features, coefficients and scales of one length")
    for key in ("fitted_for", "configured_variant", "verdict", "gold"):
        if key not in data:
            raise ValueError(f"{path}: {key} is missing")
    return data


def check_fit(report: dict, config: AnnotateConfig, path: str) -> None:
    """ValueError naming the first setting in which `config` differs from what the fit file's
    weights were fitted for."""
    want, have = fitted_for(config), report["fitted_for"]
    for key in sorted(set(want) | set(have)):
        if want.get(key) != have.get(key):
            raise ValueError(f"annotate.ensemble.weights: {path} was fitted for {key} = {have.get(key)!r}, the recipe "
                             f"has {want.get(key)!r}; refit it on gold pairs (annotate.ensemble.gold, or python -m "
                             "pipeline.annotate.ensemble_fit) for this annotator")


def write_fit(report: dict, config: AnnotateConfig, out: Path, fitted_on: dict) -> Path:
    """A fit file of `report` (fit_report's, with its "gold"): the weights, the out-of-fold numbers,
    what they are valid for (`fitted_for`) and what they were fitted on (`fitted_on`: gold files,
    their sha256 and licences); no local path."""
    data = {k: v for k, v in report.items() if k not in ("config", "requests", "verdicts")}
    data.update({"format": FIT_FORMAT, "fitted_for": fitted_for(config), "fitted_on": fitted_on})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return out


def measure(config: AnnotateConfig, work_root: Path, engines: Mapping[str, Engine] | None = None) -> dict:
    """The ensemble's fit report for this configuration: fitted now, read back when nothing changed,
    or read from its fit file (`annotate.ensemble.weights`, checked against the configuration);
    engines are opened for a fit when not given."""
    from pipeline.annotate.eval import annotator_engines

    if (weights := config.ensemble.weights) is not None:
        report = read_fit(weights)
        check_fit(report, config, Path(weights).name)
        return {**report, "fit_file": Path(weights).name}
    path = report_path(config, work_root)
    if path.is_file():
        return json.loads(path.read_text())
    pairs, rejected = gold_pairs(config)
    own = engines is None
    engines = annotator_engines(config) if own else engines
    try:
        report = fit_report(config, engines, pairs, build_score_cache(work_root), progress_label="ensemble fit")
    finally:
        if own:
            for engine in {id(x): x for x in engines.values()}.values():
                engine.close()
    report["gold"] = {"path": ", ".join(Path(g).name for g in config.ensemble.gold),
                      "files": [Path(g).name for g in config.ensemble.gold], "format": config.ensemble.format,
                      "pairs": len(pairs), "limit": config.ensemble.limit, "seed": config.ensemble.seed,
                      "rejected": rejected}
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, json.dumps(report, indent=2, sort_keys=True).encode())
    return report


def scoring_weights(report: dict) -> dict:
    """The weights the annotate stage scores with: the fitted ones, the length term dropped when
    the configured variant is length-controlled."""
    w = dict(report["weights"])
    if report["configured_variant"] == "length_controlled":
        w["coefficients"] = [0.0 if f == ensemble.LENGTH_FEATURE else c
                             for f, c in zip(w["features"], w["coefficients"])]
    return w


def sentence(report: dict) -> str:
    """One line for the build log: the fit, its out-of-fold accuracy and the verdict."""
    w = report["weights"]
    terms = ", ".join(f"{f} {c:+.2f}" for f, c in zip(w["features"], w["coefficients"]))
    source = f"ensemble weights from {report['fit_file']}, " if report.get("fit_file") else "ensemble "
    return (f"{source}fitted on {w['decisive_pairs']} gold pairs of {report['gold']['path']} "
            f"({w['folds']}-fold): {terms}. {report['verdict']['sentence']}")


def main(argv: list[str] | None = None) -> None:
    """Fit a recipe's ensemble on its `annotate.ensemble.gold` and write a fit file for
    `annotate.ensemble.weights`."""
    import argparse

    from pipeline.ids import file_sha256
    from pipeline.recipe import load_recipe

    ap = argparse.ArgumentParser(prog="python -m pipeline.annotate.ensemble_fit", description=main.__doc__)
    ap.add_argument("recipe", type=Path, help="a recipe whose annotate.ensemble names gold files")
    ap.add_argument("--out", type=Path, required=True, help="the fit file to write")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "prefpipe" / "ensemble-fit",
                    help="where the gold pairs' scores are cached")
    ap.add_argument("--licence", action="append", default=[], help="licence note of a gold source, for the file")
    args = ap.parse_args(argv)
    config = load_recipe(args.recipe).annotate
    if config is None or config.ensemble is None or not config.ensemble.gold:
        raise SystemExit(f"{args.recipe}: annotate.ensemble.gold: the recipe names no gold files to fit on")
    report = measure(config, args.work)
    files = [{"file": Path(g).name, "sha256": file_sha256(Path(g))} for g in config.ensemble.gold]
    write_fit(report, config, args.out, {"files": files, "licences": args.licence})
    print(f"{args.out}: {sentence(report)}")


if __name__ == "__main__":
    main()
