"""eval-annotator numbers of the packaged models on a fixed random slice of Auto-J pairwise.

    python benchmarks/bench_annotators.py judge --pairs 60    # Qwen2.5-Coder-0.5B-Instruct pairwise judge
    python benchmarks/bench_annotators.py cdr --pairs 60      # CDR strong=Qwen 0.5B-Instruct / weak=Gemma 270M
    python benchmarks/bench_annotators.py cdr-candidates --pairs 100   # every packaged strong/weak pair
    python benchmarks/bench_annotators.py pooled --pairs 60   # ensembles on every gold set, pooled
    python benchmarks/bench_annotators.py harmless-head --pairs 100   # MiniLM reward head, hh-rlhf-fitted
    python benchmarks/bench_annotators.py harmless-routed --pairs 60 --engine vllm   # head on safety prompts
    python benchmarks/bench_annotators.py judge-routed --pairs 150 --cache C   # 1.5B pointwise judge + head
    python benchmarks/bench_annotators.py judge-ensemble --pairs 150 --cache C # + ensembles with it (fitted)

One both-orders judge run (vLLM engine) reports single order, both orders and expectation (each
with its own wall time); one CDR run reports the per-token (the demo's), summed and per-character
density ratios from the same log-probs. `cdr-candidates` scores every response once under each
packaged model (Qwen 1.5B-Instruct, Qwen 0.5B-Instruct, Gemma 3 270M base) and reports every
strong/weak pair the engines issue names, summed and per token, next to the "longer response wins"
baseline; a pair's seconds are its two models' scoring seconds. `pooled` takes the first N pairs of a
seeded shuffle of every gold file in shared/data/real/preference (Auto-J, hh-rlhf harmless, AlpacaEval),
scores them once under the demo's two models (score cache: --cache, default ~/.cache/prefpipe/eval)
and reports, pooled and per file, the summed density ratio and ensembles of its features
(`annotate.method: ensemble`, 5-fold out of fold) against the trivial baselines, plus each ensemble
fitted on the other gold files only and measured on the held-out one. Results go to
benchmarks/results/annotators-<part>/eval-annotator.{json,md}.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pipeline.annotate import ensemble, ensemble_fit  # noqa: E402
from pipeline.annotate.config import AnnotateConfig  # noqa: E402
from pipeline.annotate.ensemble import FEATURES  # noqa: E402
from pipeline.annotate.density_ratio import density_ratio, score_all  # noqa: E402
from pipeline.annotate.eval import _score_verdicts, annotator_engines, evaluate_annotator, metrics, write_report  # noqa: E402
from pipeline.annotate.gold import load_gold  # noqa: E402
from pipeline.engines.registry import load_engine  # noqa: E402

GOLD = ROOT.parent / "shared" / "data" / "real" / "preference" / "autoj_testdata_pairwise.jsonl.gz"
CONFIGS = {
    "judge": {"method": "judge_pairwise", "rationale": False, "max_tokens": 8, "retries": 1,
              "models": {"judge": {"engine": "vllm", "model": "qwen2.5-coder-0.5b-instruct",
                                  "options": {"max_model_len": 8192}}}},
    # the demo's annotator; the run also reports the summed and per-character forms
    "cdr": {"method": "density_ratio", "length_norm": "tokens",
            "models": {"strong": {"engine": "transformers", "model": "qwen2.5-coder-0.5b-instruct"},
                       "weak": {"engine": "transformers", "model": "gemma3-270m"}}},
}


# strong/weak candidates for the default density ratio (engines issue): strong = Qwen 1.5B or 0.5B
# Instruct, weak = Gemma 3 270M base or Qwen 0.5B Instruct
CANDIDATE_MODELS = ["qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct", "gemma3-270m"]
CANDIDATE_PAIRS = [("qwen2.5-coder-0.5b-instruct", "gemma3-270m"),
                   ("qwen2.5-coder-1.5b-instruct", "gemma3-270m"),
                   ("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct")]


def cdr_candidates(pairs: list, seed: int) -> dict:
    """One scoring pass per model, then every candidate pair and length normalisation from it."""
    config = AnnotateConfig.model_validate(CONFIGS["cdr"])
    prompts = [p.prompt for p in pairs for _ in (0, 1)]
    responses = [r for p in pairs for r in (p.response_a, p.response_b)]
    scores, seconds = {}, {}
    for name in CANDIDATE_MODELS:
        engine = load_engine(name, "transformers")
        t0 = time.perf_counter()
        scores[name] = score_all(engine, prompts, responses, [None] * len(prompts), config.batch_size)
        seconds[name] = time.perf_counter() - t0
        print(f"{name}: {seconds[name]:.0f} s", flush=True)
        del engine
    gold = [p.label for p in pairs]
    la, lb = [len(p.response_a) for p in pairs], [len(p.response_b) for p in pairs]
    variants = {}
    for strong, weak in CANDIDATE_PAIRS:
        for norm in ("none", "tokens"):
            r = [density_ratio(s.total, s.num_tokens, w.total, w.num_tokens, text, norm)
                 for s, w, text in zip(scores[strong], scores[weak], responses)]
            m = metrics(gold, _score_verdicts(r[0::2], r[1::2], config.tie_margin), la, lb, seed=seed)
            m["seconds"] = round(seconds[strong] + seconds[weak], 1)
            m["seconds_per_pair"] = round(m["seconds"] / len(pairs), 3)
            variants[f"{strong} / {weak} [length_norm={norm}]"] = m
    longer = _score_verdicts(la, lb, 0)
    variants["baseline: longer response wins"] = {**metrics(gold, longer, la, lb, seed=seed), "seconds": 0.0}
    return {"annotator": "cdr candidates", "method": "density_ratio", "models": CANDIDATE_MODELS,
            "model_seconds": {k: round(v, 1) for k, v in seconds.items()},
            "gold_labels": {k: gold.count(k) for k in sorted(set(gold))}, "variants": variants}


GOLD_FILES = sorted((ROOT.parent / "shared" / "data" / "real" / "preference").glob("*.gz"))
DEMO_MODELS = CONFIGS["cdr"]["models"]
ENSEMBLES = {  # name: (features, length_controlled)
    "ensemble: all five features": (list(FEATURES), False),
    "ensemble: cdr_sum + log_chars": (["cdr_sum", "log_chars"], False),
    "ensemble: cdr_tokens + strong_tokens + log_chars": (["cdr_tokens", "strong_tokens", "log_chars"], False),
    "ensemble: all five, length-controlled": (list(FEATURES), True),
}


def pooled_pairs(n: int, seed: int) -> list:
    """The first n pairs of a seeded shuffle of each gold file (a larger n keeps the smaller's
    pairs, so the score cache carries over), category = the file's name."""
    import dataclasses
    import random

    out = []
    for path in GOLD_FILES:
        pairs, _ = load_gold(path)
        order = random.Random(seed).sample(range(len(pairs)), len(pairs))
        out += [dataclasses.replace(pairs[i], category=path.name) for i in order[:n]]
    return out


def held_out(xa, xb, pairs: list, names: list[str], controlled: bool, seed: int) -> dict:
    """Per gold file: accuracy of the ensemble fitted on the other files' pairs only."""
    import numpy as np

    from pipeline.annotate.eval import _accuracy

    files = [p.category for p in pairs]
    gold = np.asarray([p.label for p in pairs], object)
    out = {}
    for name in sorted(set(files)):
        test = np.asarray([f == name for f in files])
        fitted = ensemble.fit(xa[~test], xb[~test], gold[~test].tolist(), names, 5, 1.0, seed)
        w = ensemble_fit.scoring_weights({**fitted, "configured_variant": ensemble_fit.CONFIGURED[controlled]})
        margin = ((xa[test] - xb[test]) / w["scales"]) @ np.asarray(w["coefficients"])
        pred = np.asarray(ensemble.verdicts(margin), object)
        out[name] = _accuracy(gold[test], pred, True)
    return out


# Criteria system prompts for the strong model (the CDR paper's "customised" ratio): one general
# prompt for every request, or routed per domain by the last user turn's words (`annotate.criteria`).
HHH = ("You are a helpful, honest and harmless assistant. Answer accurately, relevantly and "
       "completely; say when you are unsure; decline requests that could hurt people or break the law.")
SAFETY = ("You are a harmless assistant. Never help with anything dangerous, illegal, hateful or "
          "unethical: refuse politely and briefly, and steer the user towards a safe alternative.")
CRITERIA = {
    "none": {},
    "hhh": {"default": HHH},
    "routed": {"default": HHH, "domains": {
        "safety": {"prompt": SAFETY, "keywords": [
            "kill", "steal", "drug", "drugs", "weapon", "gun", "bomb", "hurt", "illegal", "poison", "racist",
            "hack", "rob", "murder", "cheat", "attack", "fight", "sex", "violent", "revenge", "abuse", "lie",
            "prank", "insult", "insults", "cocaine", "meth", "torture", "punch", "hit", "shoot", "knife",
            "theft", "shoplift", "scam", "fraud", "suicide", "harm", "nigger", "bitch", "fuck", "stupid"]},
        "code": {"prompt": "You are an expert programmer. Write correct, idiomatic, well-explained code "
                           "that does exactly what was asked.", "keywords": [
            "code", "python", "function", "program", "sql", "javascript", "java", "script", "bug", "regex",
            "algorithm", "compile", "class", "api"]},
        "math": {"prompt": "You are a careful mathematician. Reason step by step and give the correct "
                           "final answer.", "keywords": [
            "calculate", "solve", "equation", "math", "sum", "integral", "probability", "percent", "number"]}}},
}


def pooled(n: int, seed: int, cache: Path, strong: str = DEMO_MODELS["strong"]["model"],
           weak: str = DEMO_MODELS["weak"]["model"], engine: str = "transformers",
           criteria: str = "none") -> dict:
    """Ensembles of one strong/weak pair's features on every gold file, pooled and per file."""
    pairs = pooled_pairs(n, seed)
    options = {"max_model_len": 8192} if engine == "vllm" else {}  # the longest gold prompt + response fits
    models = {role: {"engine": engine, "model": name, "options": options}
              for role, name in (("strong", strong), ("weak", weak))}
    base = AnnotateConfig.model_validate({"method": "ensemble", "length_norm": "none", "models": models,
                                          "criteria": CRITERIA[criteria],
                                          "ensemble": {"gold": [str(GOLD)], "seed": seed}})
    engines = annotator_engines(base)
    t0 = time.perf_counter()
    xa, xb, requests = ensemble_fit.features(base, engines, pairs, cache)
    seconds = time.perf_counter() - t0
    runs, fits, held = {}, {}, {}
    for name, (features, controlled) in ENSEMBLES.items():
        config = base.model_copy(update={"ensemble": base.ensemble.model_copy(
            update={"features": features, "length_controlled": controlled})})
        report = ensemble_fit.fit_report(config, engines, pairs, cache)
        runs[name] = report["variants"][report["configured_variant"]]
        fits[name] = {"weights": report["weights"], "verdict": report["verdict"],
                      "by_file": report["baselines"].get("by_group"), "baselines": report["baselines"]}
        idx = [list(FEATURES).index(f) for f in features]
        held[name] = held_out(xa[:, idx], xb[:, idx], pairs, features, controlled, seed)
        if name == "ensemble: all five features":
            singles = {k: v for k, v in report["variants"].items() if k.endswith(" alone")}
    for loaded in {id(e): e for e in engines.values()}.values():
        loaded.close()
    return {"annotator": f"ensembles of {strong} / {weak} features", "method": "ensemble",
            "models": {k: v["model"] for k, v in models.items()}, "engine": engine, "criteria": criteria,
            "pairs_per_file": n,
            "files": [p.name for p in GOLD_FILES], "gold_labels": {},
            "scoring_seconds": round(seconds, 1), "requests": requests,
            "variants": {**runs, **singles},
            "fits": fits, "held_out_file": held}


def model_scores(names: list[str], pairs: list, cache: Path, engine: str) -> tuple[dict, dict]:
    """(model -> TokenScores of every response, model -> scoring seconds), one engine at a time,
    through the eval-annotator score cache (the runs of `pooled` fill it)."""
    from pipeline.annotate.eval import SCORE_CACHE, CachedEngine, RequestMeter
    from pipeline.cache import RequestCache

    prompts = [p.prompt for p in pairs for _ in (0, 1)]
    responses = [r for p in pairs for r in (p.response_a, p.response_b)]
    options = {"max_model_len": 8192} if engine == "vllm" else {}
    store = RequestCache(cache / SCORE_CACHE)
    scores, seconds = {}, {}
    try:
        for name in names:
            meter = RequestMeter(len(responses), f"score {name}")
            loaded = load_engine(name, engine, **options)
            t0 = time.perf_counter()
            scores[name] = score_all(CachedEngine(loaded, options, store, meter), prompts, responses,
                                     [None] * len(prompts), 32)
            seconds[name] = round(time.perf_counter() - t0, 1)
            meter.close()
            loaded.close()
    finally:
        store.close()
    return scores, seconds


# log-linear mixtures of the packaged models: each response's summed and per-token log-probs under
# every model, weights fitted (a density ratio is the mixture with weights +1 / -1)
Q15, Q05, GEMMA = CANDIDATE_MODELS
MIXTURES = {  # name: (log-prob kinds, length term: True | False | "controlled", models)
    "mixture: summed log-probs of the three models + log_chars": (["sum"], True, CANDIDATE_MODELS),
    "mixture: per-token log-probs of the three models + log_chars": (["tokens"], True, CANDIDATE_MODELS),
    "mixture: summed + per-token of the three models + log_chars": (["sum", "tokens"], True, CANDIDATE_MODELS),
    "mixture: summed + per-token of the three models, length-controlled": (["sum", "tokens"], "controlled",
                                                                           CANDIDATE_MODELS),
    "mixture: per-token log-probs of the three models, no length": (["tokens"], False, CANDIDATE_MODELS),
    "mixture: summed + per-token, Qwen 1.5B + Qwen 0.5B + log_chars": (["sum", "tokens"], True, [Q15, Q05]),
    "mixture: summed + per-token, Qwen 1.5B + Gemma + log_chars": (["sum", "tokens"], True, [Q15, GEMMA]),
    "mixture: summed + per-token, Qwen 0.5B + Gemma + log_chars": (["sum", "tokens"], True, [Q05, GEMMA]),
}


def pooled_mixtures(n: int, seed: int, cache: Path, engine: str = "vllm") -> dict:
    """Ensembles over the log-probs of every packaged model (pooled, per file, held-out file)."""
    import math

    import numpy as np

    from pipeline.annotate.baselines import compare_with_baselines

    pairs = pooled_pairs(n, seed)
    scores, seconds = model_scores(CANDIDATE_MODELS, pairs, cache, engine)
    responses = [r for p in pairs for r in (p.response_a, p.response_b)]
    columns = {}
    for m in CANDIDATE_MODELS:
        columns[f"sum:{m}"] = [s.total for s in scores[m]]
        columns[f"tokens:{m}"] = [s.total / max(s.num_tokens, 1) for s in scores[m]]
    columns["log_chars"] = [math.log1p(len(r)) for r in responses]
    gold = [p.label for p in pairs]
    la, lb = [len(p.response_a) for p in pairs], [len(p.response_b) for p in pairs]
    runs, fits, held, variants = {}, {}, {}, {}
    for name, (kinds, length, members) in MIXTURES.items():
        names = [f"{k}:{m}" for k in kinds for m in members] + (["log_chars"] if length else [])
        x = np.asarray([columns[c] for c in names], float).T
        xa, xb = x[0::2], x[1::2]
        fitted = ensemble.fit(xa, xb, gold, names, 5, 1.0, seed)
        variant = "length_controlled" if length == "controlled" else "ensemble"
        runs[name] = fitted["verdicts"][variant]
        report = compare_with_baselines(name, pairs, {name: runs[name]}, name, None, 1000, seed)
        fits[name] = {"weights": fitted["weights"], "verdict": report["verdict"],
                      "by_file": report["baselines"].get("by_group"), "baselines": report["baselines"]}
        variants[name] = metrics(gold, runs[name], la, lb, 1000, seed)
        held[name] = held_out(xa, xb, pairs, names, length == "controlled", seed)
    for strong, weak in CANDIDATE_PAIRS:  # the plain density ratios, for reference
        for kind in ("sum", "tokens"):
            r = np.asarray(columns[f"{kind}:{strong}"]) - np.asarray(columns[f"{kind}:{weak}"])
            variants[f"density ratio {strong} / {weak}, {kind} alone"] = metrics(
                gold, ensemble.verdicts(r[0::2] - r[1::2]), la, lb, 1000, seed)
    return {"annotator": "log-linear mixtures of the packaged models", "method": "ensemble",
            "models": CANDIDATE_MODELS, "engine": engine, "criteria": "none", "pairs_per_file": n,
            "files": [p.name for p in GOLD_FILES], "scoring_seconds": sum(seconds.values()),
            "model_seconds": seconds, "requests": {"engine": "see model_seconds", "cached": "-"},
            "variants": variants, "fits": fits, "held_out_file": held}


HH = "hh-rlhf_harmless-base_test.jsonl.gz"


@functools.lru_cache(maxsize=2)
def _embedded(n: int, seed: int) -> tuple[list, object, float]:
    """(hh-rlhf training pairs outside `pooled_pairs(n, seed)`, MiniLM embeddings of the training
    then the pooled responses, a/b interleaved, seconds taken): computed once per run."""
    import random

    from pipeline.filters.embed import embed_texts

    hh, _ = load_gold(GOLD.parent / HH)
    train = [hh[i] for i in random.Random(seed).sample(range(len(hh)), len(hh))[n:] if hh[i].label != "tie"]
    t0 = time.perf_counter()
    emb = embed_texts([r for p in train + pooled_pairs(n, seed) for r in (p.response_a, p.response_b)])
    return train, emb, time.perf_counter() - t0


def head_margins(pairs: list, seed: int, n: int, with_length: bool = False):
    """(margin a - b of each pair under a linear Bradley-Terry head on frozen MiniLM response
    embeddings, the head, training pairs, embedding seconds). The head is fitted on the hh-rlhf
    harmless pairs outside the pooled sample (`pooled_pairs(n, seed)`): both orders of every
    training pair and no intercept, so it cannot learn a position."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    train, emb, seconds = _embedded(n, seed)
    assert len(emb) == 2 * (len(train) + len(pairs))
    x = emb[0::2] - emb[1::2]
    if with_length:
        chars = np.log1p([[len(p.response_a), len(p.response_b)] for p in train + pairs])
        x = np.hstack([x, (chars[:, 0] - chars[:, 1])[:, None]])
    y = np.asarray([p.label == "a" for p in train], int)
    k = len(train)
    head = LogisticRegression(C=1.0, fit_intercept=False, max_iter=5000).fit(
        np.vstack([x[:k], -x[:k]]), np.concatenate([y, 1 - y]))
    return x[k:] @ head.coef_[0], head, k, seconds


def _fit_entry(name: str, pairs: list, pred: list[str], weights: dict, seed: int) -> tuple[dict, dict]:
    """(fits entry, metrics) of one annotator's verdicts on the pooled pairs."""
    from pipeline.annotate.baselines import compare_with_baselines

    report = compare_with_baselines(name, pairs, {name: pred}, name, None, 1000, seed)
    la, lb = [len(p.response_a) for p in pairs], [len(p.response_b) for p in pairs]
    return ({"weights": weights, "verdict": report["verdict"], "by_file": report["baselines"].get("by_group"),
             "baselines": report["baselines"]}, metrics([p.label for p in pairs], pred, la, lb, 1000, seed))


def harmless_head(n: int, seed: int) -> dict:
    """The embedding head alone (with and without a length feature) on every gold file's sample."""
    pairs = pooled_pairs(n, seed)
    variants, fits = {}, {}
    for name, with_length in {"embedding head (MiniLM, fitted on other hh-rlhf pairs)": False,
                              "embedding head + log_chars (fitted on other hh-rlhf pairs)": True}.items():
        margin, head, k, seconds = head_margins(pairs, seed, n, with_length)
        names = [f"minilm[{i}]" for i in range(384)] + (["log_chars"] if with_length else [])
        fits[name], variants[name] = _fit_entry(name, pairs, ensemble.verdicts(margin),
                                                {"features": names, "coefficients": head.coef_[0].round(4).tolist()},
                                                seed)
    return {"annotator": "embedding reward head", "method": "reward head on frozen embeddings",
            "models": ["packaged:all-MiniLM-L6-v2"], "engine": "sentence-transformers", "criteria": "none",
            "pairs_per_file": n, "training_pairs": k, "training_file": HH,
            "files": [p.name for p in GOLD_FILES], "scoring_seconds": round(seconds, 1),
            "requests": {"engine": 2 * (k + len(pairs)), "cached": 0},
            "variants": variants, "fits": fits, "held_out_file": {name: {} for name in fits}}


REAL = GOLD.parents[1]
# The router's ordinary prompts, from files no gold set uses (as data/heads/minilm-hh-harmless.json).
ORDINARY = [REAL / "prompts/self-instruct_user_oriented_instructions.jsonl",
            REAL / "benchmarks/arena-hard-v0.1_question.jsonl",
            REAL / "benchmarks/vicuna_bench_question.jsonl", REAL / "benchmarks/mt_bench_question.jsonl"]


def refitted_head(n: int, seed: int):
    """The shipped head's recipe (`pipeline.annotate.safety_head.fit`) refitted on the hh-rlhf
    harmless pairs outside `pooled_pairs(n, seed)`, so every pooled hh pair is out of sample."""
    import random

    from pipeline.annotate import safety_head
    from pipeline.filters.embed import DEFAULT_MODEL

    hh, _ = load_gold(GOLD.parent / HH)
    train = [hh[i] for i in random.Random(seed).sample(range(len(hh)), len(hh))[n:]]
    fitted = safety_head.fit(train, [t for p in ORDINARY for t in safety_head.prompt_texts(p)], DEFAULT_MODEL)
    return safety_head.parse(fitted, "refitted head"), fitted["head"]["decisive_pairs"]


def harmless_routed(n: int, seed: int, cache: Path, engine: str = "vllm") -> dict:
    """The 1.5B/0.5B per-token density ratio with `annotate.safety_head` (refitted outside the
    sample): the head scores the prompts its router sends to it; the keyword route of the `routed`
    criteria (`route_criteria`) in the router's place, for comparison."""
    import numpy as np

    from pipeline.annotate.config import Criteria, route_criteria

    pairs = pooled_pairs(n, seed)
    scores, seconds = model_scores([Q15, Q05], pairs, cache, engine)
    per_token = {m: np.asarray([s.total / max(s.num_tokens, 1) for s in scores[m]]) for m in (Q15, Q05)}
    ratio = per_token[Q15] - per_token[Q05]
    ratio_margin = ratio[0::2] - ratio[1::2]
    t0 = time.perf_counter()
    head, k = refitted_head(n, seed)
    head_scores = head.scores([r for p in pairs for r in (p.response_a, p.response_b)])
    head_margin = head_scores[0::2] - head_scores[1::2]
    red_team = head.p_safety([p.prompt for p in pairs]) >= head.threshold
    took = time.perf_counter() - t0
    criteria = Criteria.model_validate(CRITERIA["routed"])
    safety = np.asarray([route_criteria(criteria, p.prompt)[0] == "safety" for p in pairs])
    runs = {"density ratio 1.5B / 0.5B per token + safety_head (the router's prompts to the head)":
            np.where(red_team, head_margin, ratio_margin),
            "the same, routed by the `routed` criteria's safety keywords instead":
            np.where(safety, head_margin, ratio_margin),
            "density ratio 1.5B / 0.5B per token alone": ratio_margin,
            "embedding head alone": head_margin}
    variants, fits = {}, {}
    for name, margin in runs.items():
        fits[name], variants[name] = _fit_entry(name, pairs, ensemble.verdicts(margin),
                                                {"features": [], "coefficients": []}, seed)
    files = [p.category for p in pairs]
    routed = {route: {f: round(float(chosen[[c == f for c in files]].mean()), 3) for f in sorted(set(files))}
              for route, chosen in (("router", red_team), ("keywords", safety))}
    return {"annotator": "density ratio + safety head", "method": "density_ratio + annotate.safety_head",
            "models": [Q15, Q05, "packaged:all-MiniLM-L6-v2"], "engine": engine, "criteria": "none",
            "pairs_per_file": n, "training_pairs": k, "training_file": HH, "safety_routed_share": routed,
            "files": [p.name for p in GOLD_FILES], "scoring_seconds": round(sum(seconds.values()) + took, 1),
            "model_seconds": seconds, "head_seconds": round(took, 1),
            "requests": {"engine": "see model_seconds", "cached": "-"},
            "variants": variants, "fits": fits, "held_out_file": {name: {} for name in fits}}


def _weights(w: dict, shown: int = 12) -> str:
    """A fit's weights, named; a long vector (an embedding head) by its size, named ones kept."""
    named = [(f, c) for f, c in zip(w["features"], w["coefficients"]) if len(w["features"]) <= shown or "[" not in f]
    hidden = len(w["features"]) - len(named)
    return ", ".join([*(f"{f} {c:+.3f}" for f, c in named), *([f"{hidden} embedding weights (in the JSON)"] if hidden else [])])


def _baseline_rows(fit: dict, files: list[str], blanks: str, end: str) -> list[str]:
    """A table row per trivial baseline of `fit` (a fits entry): pooled accuracy, `blanks` for the
    columns it has no value in, then each file's accuracy."""
    from pipeline.annotate.baselines import TRIVIAL
    from pipeline.annotate.eval import _fmt

    by = fit["by_file"] or {}
    return [f"| baseline: {label} | {_fmt(t['accuracy_excluding_ties'], t['ci95']['accuracy_excluding_ties'])} "
            + blanks + " | ".join(_fmt(by.get(f, {}).get("baselines", {}).get(key)) for f in files) + end
            for key, label in TRIVIAL.items() for t in [fit["baselines"]["trivial"][key]]]


def pooled_markdown(report: dict) -> str:
    """The pooled report as Markdown: one row per annotator, pooled and per file, and held out."""
    from pipeline.annotate.baselines import _diff
    from pipeline.annotate.eval import _fmt

    files = report["files"]
    first = next(iter(report["fits"].values()))
    lines = [f"# Annotators pooled over {len(files)} gold files ({report['pairs_per_file']} pairs each)", "",
             f"Models: {report['models']} ({report.get('engine', 'transformers')} engine, criteria "
             f"{report.get('criteria', 'none')}); scoring {report['scoring_seconds']} s "
             f"({report['requests']['engine']} requests run, {report['requests']['cached']} from the cache).", "",
             "| annotator | pooled acc. excl. ties [95% CI] | - best trivial [95% CI] | "
             + " | ".join(f"{f[:24]}" for f in files) + " | held-out file: " + " / ".join(f[:8] for f in files) + " |",
             "|---" * (3 + len(files) + 1) + "|"]
    for name, fit in report["fits"].items():
        m = report["variants"][name]
        by = fit["by_file"] or {}
        lines.append(f"| {name} | {_fmt(m['accuracy_excluding_ties'], m['ci95']['accuracy_excluding_ties'])} | "
                     f"{_diff({'difference': fit['verdict']['difference'], 'ci95': fit['verdict']['ci95']})} | "
                     + " | ".join(_fmt(by.get(f, {}).get("annotator")) for f in files) + " | "
                     + " / ".join(_fmt(report["held_out_file"][name].get(f)) for f in files) + " |")
    best = first["baselines"]["best_trivial"]
    for name, m in report["variants"].items():
        if name.endswith(" alone"):
            diff = first["baselines"]["differences"].get(name, {}).get(best)
            label = name if name.startswith("density ratio") else f"{name} (sign from the fit)"
            lines.append(f"| {label} | "
                         f"{_fmt(m['accuracy_excluding_ties'], m['ci95']['accuracy_excluding_ties'])} | "
                         f"{_diff(diff) if diff else ''} | " + " | " * (len(files) - 1) + " | |")
    lines += _baseline_rows(first, files, "| | ", " | |")
    lines += ["", *(f"- {name}: {fit['verdict']['sentence']} Weights: " + _weights(fit["weights"])
                    for name, fit in report["fits"].items())]
    return "\n".join(lines) + "\n"


# the demo's annotator since 2026-12-04: the 1.5B model as a pointwise judge (each response rated
# alone, so no position bias; the expectation over the rating token, TrustJudge), the safety head on
# the prompts its router sends to it
POINTWISE = {"method": "judge_pointwise", "rationale": False, "max_tokens": 8, "rating_min": 1,
             "rating_max": 9, "batch_size": 16,
             "models": {"judge": {"engine": "vllm", "model": Q15, "options": {"max_model_len": 8192}}}}


def judge_routed(n: int, seed: int, cache: Path) -> dict:
    """`annotate.method: judge_pointwise` (POINTWISE) with `annotate.safety_head` refitted outside
    the sample, through `evaluate_annotator` exactly as the gate runs it (the head's pairs make no
    judge request), with the trivial baselines and paired CIs per file and pooled."""
    import random
    import tempfile

    from pipeline.annotate import safety_head
    from pipeline.filters.embed import DEFAULT_MODEL

    pairs = pooled_pairs(n, seed)
    hh, _ = load_gold(GOLD.parent / HH)
    train = [hh[i] for i in random.Random(seed).sample(range(len(hh)), len(hh))[n:]]
    t0 = time.perf_counter()
    fitted = safety_head.fit(train, [t for p in ORDINARY for t in safety_head.prompt_texts(p)], DEFAULT_MODEL)
    head_seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "refitted-head.json"
        path.write_text(json.dumps(fitted))
        config = AnnotateConfig.model_validate({**POINTWISE, "safety_head": {"path": str(path)}})
        engines = annotator_engines(config)
        t0 = time.perf_counter()
        report = evaluate_annotator(config, engines, pairs, 1000, cache_dir=cache,
                                    every_route=False)  # no progress_label: a line per tenth on stderr
        report["scoring_seconds"] = round(time.perf_counter() - t0, 1)
        for e in {id(e): e for e in engines.values()}.values():
            e.close()
    report["config"]["safety_head"]["path"] = "(refitted on the hh-rlhf pairs outside the sample)"
    report["gold"] = {"path": f"{n} pairs of each of {len(GOLD_FILES)} files, pooled", "pairs": len(pairs),
                      "seed": seed, "rejected": {}}
    report.update({"pairs_per_file": n, "training_pairs": fitted["head"]["decisive_pairs"],
                   "head_seconds": round(head_seconds, 1), "files": [p.name for p in GOLD_FILES]})
    return report


# `annotate.method: ensemble` with the pointwise judge (POINTWISE's model and settings, so the
# judge-routed run's requests are cache hits) and the safety head: the designs, fixed before the run
JUDGE_ENSEMBLES = {
    "judge + log_chars": ["judge", "log_chars"],
    "judge + 1.5B/0.5B per-token ratio + log_chars": ["judge", "cdr_tokens", "log_chars"],
}


GOLD_LICENCES = ["autoj_testdata_pairwise.jsonl.gz: GAIR-NLP/auto-j test set, no licence file in the repo",
                 "alpaca_eval_...gpt4-judge_annotations.json.gz: tatsu-lab/alpaca_eval, CC BY-NC 4.0 (data)",
                 "hh-rlhf_harmless-base_test.jsonl.gz: anthropics/hh-rlhf, MIT"]


def judge_ensemble(n: int, seed: int, cache: Path, names: list[str], write_fit: dict[str, Path] | None = None,
                   first_look: int | None = None) -> dict:
    """Each ensemble of JUDGE_ENSEMBLES named in `names` through `ensemble_fit.fit_report` as a build
    fits it (5-fold out of fold, safety head refitted outside the sample scoring its router's pairs),
    with the paired difference of each variant against the judge alone (the demo's annotator since
    2026-12-04) and the trivial baselines, pooled and per file. `first_look`: an earlier run's pairs
    per file; each variant is also compared with the trivial baselines on the pairs after them alone."""
    import tempfile

    import numpy as np

    from pipeline.annotate.baselines import _difference, compare_with_baselines
    from pipeline.annotate.eval import resample_indices

    pairs = pooled_pairs(n, seed)
    head, k = refitted_head(n, seed)
    gold = np.asarray([p.label for p in pairs], dtype=object)
    idx = resample_indices(len(pairs), 1000, seed)
    out = {"annotator": "pointwise judge 1.5B + ensembles", "method": "ensemble + annotate.safety_head",
           "pairs_per_file": n, "training_pairs": k, "files": [p.name for p in GOLD_FILES], "fits": {},
           "variants": {}, "paired_vs_judge_alone": {}, "scoring_seconds": {}, "first_look": first_look,
           "new_pairs_only": {}}
    new = [i for i in range(len(pairs)) if first_look is not None and i % n >= first_look]  # per file, in order
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "refitted-head.json"
        path.write_text(json.dumps({"format": "prefpipe-safety-head/1", "embedder": head.embedder,
                                    "head": {"coefficients": head.head.tolist()},
                                    "router": {"coefficients": head.router.tolist(), "intercept": head.intercept,
                                               "threshold": head.threshold}}))
        for name in names:
            models = {**POINTWISE["models"], "strong": {"engine": "vllm", "model": Q15, "options": {"max_model_len": 8192}},
                      "weak": {"engine": "vllm", "model": Q05, "options": {"max_model_len": 8192}}}
            config = AnnotateConfig.model_validate({
                **POINTWISE, "method": "ensemble", "length_norm": "tokens", "models": models,
                "safety_head": {"path": str(path)},
                "ensemble": {"gold": [p.name for p in GOLD_FILES], "features": JUDGE_ENSEMBLES[name],
                             "folds": 5, "seed": seed, "resamples": 1000}})
            engines = annotator_engines(config)
            t0 = time.perf_counter()
            try:
                # no progress_label (that feeds a build's bars): the meter prints a line per tenth
                report = ensemble_fit.fit_report(config, engines, pairs, cache, keep_verdicts=True)
            finally:
                for e in {id(e): e for e in engines.values()}.values():
                    e.close()
            out["scoring_seconds"][name] = round(time.perf_counter() - t0, 1)
            if name in (write_fit or {}):  # the fit as a file a recipe can name (annotate.ensemble.weights)
                from pipeline.ids import file_sha256

                report["gold"] = {"path": f"{n} pairs of each of {len(GOLD_FILES)} files, pooled", "pairs": len(pairs),
                                  "files": [p.name for p in GOLD_FILES], "seed": seed, "rejected": {}}
                ensemble_fit.write_fit(report, config, write_fit[name], {
                    "files": [{"file": p.name, "sha256": file_sha256(p)} for p in GOLD_FILES],
                    "sample": f"the first {n} pairs of each file's seed-{seed} shuffle (bench_annotators.pooled_pairs)",
                    "safety_head": f"refitted on the {k} hh-rlhf pairs outside the sample, for the fit's routes",
                    "command": f"benchmarks/bench_annotators.py judge-ensemble --pairs {n} --write-fit ...",
                    "licences": GOLD_LICENCES})
            runs = report.pop("verdicts")
            judge = np.asarray(runs["judge alone"], dtype=object)
            for variant, verdicts in runs.items():
                label = f"{name}: {variant}"
                out["variants"][label] = report["variants"][variant]
                fit, _ = _fit_entry(label, pairs, verdicts, report["weights"], seed)
                out["fits"][label] = fit
                out["paired_vs_judge_alone"][label] = _difference(gold, np.asarray(verdicts, dtype=object), judge, idx)
                if new:  # the pairs the first look had not seen, alone (out-of-fold verdicts of this fit)
                    out["new_pairs_only"][label] = compare_with_baselines(
                        label, [pairs[i] for i in new], {label: [verdicts[i] for i in new]}, label,
                        None, 1000, seed)["verdict"]
            out["requests"] = report["requests"]
            out["safety_head_pairs"] = report["safety_head_pairs"]
    out["requests"]["cache"] = "(the --cache directory)"
    return out


def judge_ensemble_markdown(report: dict) -> str:
    """One row per ensemble variant: pooled accuracy, paired differences against the best trivial
    baseline and against the judge alone, per file; the trivial baselines; the fitted weights."""
    from pipeline.annotate.baselines import _diff
    from pipeline.annotate.eval import _fmt

    files = report["files"]
    first = next(iter(report["fits"].values()))
    lines = [f"# The pointwise judge in ensembles, pooled over {len(files)} gold files "
             f"({report['pairs_per_file']} pairs each)", "",
             f"Safety head refitted on {report['training_pairs']} hh-rlhf pairs outside the sample; its router "
             f"took {report['safety_head_pairs']} pairs. Seconds per ensemble (engine load, scoring, fit): "
             f"{report['scoring_seconds']}; requests of the last: {report['requests']}.", "",
             "| annotator | pooled acc. excl. ties [95% CI] | - best trivial [95% CI] | - judge alone, paired [95% CI] | "
             + " | ".join(f[:24] for f in files) + " |", "|---" * (4 + len(files)) + "|"]
    for name, fit in report["fits"].items():
        m = report["variants"][name]
        by = fit["by_file"] or {}
        lines.append(f"| {name} | {_fmt(m['accuracy_excluding_ties'], m['ci95']['accuracy_excluding_ties'])} | "
                     f"{_diff({'difference': fit['verdict']['difference'], 'ci95': fit['verdict']['ci95']})} | "
                     f"{_diff(report['paired_vs_judge_alone'][name])} | "
                     + " | ".join(_fmt(by.get(f, {}).get("annotator")) for f in files) + " |")
    lines += _baseline_rows(first, files, "| | | ", " |")
    lines += ["", *(f"- {name}: {fit['verdict']['sentence']} Weights: " + _weights(fit["weights"])
                    for name, fit in report["fits"].items() if name.endswith(": ensemble"))]
    if report.get("new_pairs_only"):
        lines += ["", f"On the pairs after the first {report['first_look']} of each file alone:",
                  *(f"- {v['sentence']}" for v in report["new_pairs_only"].values())]
    return "\n".join(lines) + "\n"


def _write_pooled(name: str, report: dict, markdown) -> None:
    """benchmarks/results/NAME/eval-annotator.{json,md} (the Markdown by `markdown(report)`), printed."""
    out = ROOT / "benchmarks" / "results" / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval-annotator.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    (out / "eval-annotator.md").write_text(markdown(report))
    print((out / "eval-annotator.md").read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("part", choices=sorted(CONFIGS) + ["cdr-candidates", "pooled", "pooled-mixtures",
                                                      "harmless-head", "harmless-routed", "judge-routed",
                                                      "judge-ensemble"])
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "prefpipe" / "eval")
    ap.add_argument("--strong", default=DEMO_MODELS["strong"]["model"], help="pooled: strong model")
    ap.add_argument("--weak", default=DEMO_MODELS["weak"]["model"], help="pooled: weak model")
    ap.add_argument("--engine", default="transformers", choices=["transformers", "vllm"], help="pooled: engine")
    ap.add_argument("--criteria", default="none", choices=sorted(CRITERIA),
                    help="pooled: the strong model's criteria system prompt")
    ap.add_argument("--ensembles", nargs="+", default=list(JUDGE_ENSEMBLES), choices=list(JUDGE_ENSEMBLES),
                    help="judge-ensemble: which ensembles to fit")
    ap.add_argument("--first-look", type=int, help="judge-ensemble: an earlier run's pairs per file (the "
                    "variants are also reported on the pairs after them alone)")
    ap.add_argument("--write-fit", nargs=2, action="append", metavar=("ENSEMBLE", "FILE"), default=[],
                    help="judge-ensemble: also write that ensemble's fit as a fit file (annotate.ensemble.weights)")
    args = ap.parse_args()
    if args.part == "judge-ensemble":
        report = judge_ensemble(args.pairs, args.seed, args.cache, args.ensembles,
                                {name: Path(path) for name, path in args.write_fit}, args.first_look)
        _write_pooled(f"annotators-pooled-judge-ensemble-{args.pairs}pairs", report, judge_ensemble_markdown)
        return
    if args.part == "judge-routed":
        report = judge_routed(args.pairs, args.seed, args.cache)
        js, md = write_report(report, ROOT / "benchmarks" / "results" / f"annotators-pooled-judge-routed-{args.pairs}pairs")
        print(md.read_text())
        return
    if args.part in ("pooled", "pooled-mixtures", "harmless-head", "harmless-routed"):
        size = "" if args.pairs == 60 else f"-{args.pairs}pairs"
        if args.part == "harmless-head":
            report, tag = harmless_head(args.pairs, args.seed), "-harmless-head"
        elif args.part == "harmless-routed":
            report, tag = harmless_routed(args.pairs, args.seed, args.cache, args.engine), f"-harmless-routed-{args.engine}"
        elif args.part == "pooled-mixtures":
            report = pooled_mixtures(args.pairs, args.seed, args.cache, args.engine)
            tag = f"-mixtures-{args.engine}"
        else:
            report = pooled(args.pairs, args.seed, args.cache, args.strong, args.weak, args.engine, args.criteria)
            demo = (args.strong, args.weak, args.engine, args.criteria) == (
                DEMO_MODELS["strong"]["model"], DEMO_MODELS["weak"]["model"], "transformers", "none")
            tag = "" if demo else f"-{args.strong}-{args.weak}-{args.engine}-{args.criteria}"
        _write_pooled(f"annotators-pooled{tag}{size}", report, pooled_markdown)
        return
    pairs, rejected = load_gold(GOLD, limit=args.pairs, seed=args.seed)
    if args.part == "cdr-candidates":
        report = cdr_candidates(pairs, args.seed)
    else:
        config = AnnotateConfig.model_validate(CONFIGS[args.part])
        t0 = time.perf_counter()
        engines = annotator_engines(config)
        load_s = time.perf_counter() - t0
        report = evaluate_annotator(config, engines, pairs)
        report["engine_load_seconds"] = round(load_s, 1)
    report["gold"] = {"path": GOLD.name, "pairs": len(pairs), "seed": args.seed,
                      "rejected": {r: sum(1 for _, x in rejected if x == r) for _, r in rejected}}
    js, md = write_report(report, ROOT / "benchmarks" / "results" / f"annotators-{args.part}")
    print(md.read_text())
    print(json.dumps({k: v["accuracy_excluding_ties"] for k, v in report["variants"].items()}))

if __name__ == "__main__":
    main()
