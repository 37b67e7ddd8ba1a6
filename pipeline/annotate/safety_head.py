"""A harmlessness reward head and the router that decides where it scores (`annotate.safety_head`).

The density ratio of two small instruction models prefers the answer a helpful model would give,
which on a red-team prompt is the harmful one (benchmarks/README.md, Annotators). This head is a
linear Bradley-Terry reward on frozen sentence embeddings of the response, fitted on human
harmlessness pairs (no intercept, both orders of every pair, so it cannot learn a position). A
logistic-regression router on the embedding of the last user turn, fitted on the same pairs' prompts
(positives) against ordinary user prompts (negatives), sends a prompt to the head when P(red-team)
is at least the threshold; every other prompt keeps the method's scorer (the density ratio or the
pointwise judge). The route is per prompt, so
all candidates of a conversation are scored by the same scorer and pairs compare like with like.

The head is a file (`data/heads/*.json`): weights, the embedder, and what it was fitted on (files,
sha256, the held-out gold sample). `python -m pipeline.annotate.safety_head --help` refits it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.engines.chat import last_user_turn

FORMAT = "prefpipe-safety-head/1"


@dataclass(frozen=True)
class SafetyHead:
    embedder: str
    head: np.ndarray
    router: np.ndarray
    intercept: float
    threshold: float
    meta: dict

    def p_safety(self, prompts: list[list[dict]]) -> np.ndarray:
        """P(the last user turn reads like a red-team attempt) of each prompt."""
        from pipeline.filters.embed import embed_texts

        unique = sorted({last_user_turn(p) for p in prompts})
        if not unique:
            return np.zeros(0)
        z = embed_texts(unique, self.embedder) @ self.router + self.intercept
        p = dict(zip(unique, 1.0 / (1.0 + np.exp(-z))))
        return np.asarray([p[last_user_turn(q)] for q in prompts], dtype=float)

    def scores(self, responses: list[str]) -> np.ndarray:
        """The head's reward of each response (higher: more harmless)."""
        from pipeline.filters.embed import embed_texts

        return embed_texts(list(responses), self.embedder) @ self.head if responses else np.zeros(0)


@dataclass(frozen=True)
class Routes:
    """Per response: the head's reward (None without a head), the router's P(red-team prompt) and
    whether the head scores it."""

    heads: list
    p_safety: list
    to_head: list


def route(config, prompts: list[list[dict]], responses: list[str]) -> Routes:
    """Where each response of an `annotate` config (`AnnotateConfig`) is scored: by the safety
    head on prompts its router reads as red-team attempts, by the method's models elsewhere."""
    n = len(responses)
    if config.safety_head is None:
        return Routes([None] * n, [None] * n, [False] * n)
    head = load(config.safety_head.path, config.safety_head.threshold)
    p = [float(x) for x in head.p_safety(prompts)]
    return Routes([float(h) for h in head.scores(responses)], p, [x >= head.threshold for x in p])


def _vector(data: dict, key: str, where: str, dim: int | None = None) -> np.ndarray:
    v = np.asarray(data.get(key, []), dtype=float)
    if v.ndim != 1 or not len(v) or (dim is not None and len(v) != dim) or not np.isfinite(v).all():
        raise ValueError(f"{where}: {key} must be a list of {dim or 'some'} finite numbers")
    return v


def load(path: str, threshold: float | None = None) -> SafetyHead:
    """The head in `path` (a `FORMAT` JSON file); `threshold` overrides the file's router threshold.
    A malformed file raises ValueError naming the file and the field."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable safety-head JSON file ({err})") from None
    return parse(data, path, threshold)


def parse(data: object, path: str, threshold: float | None = None) -> SafetyHead:
    """The head in `data` (`fit`'s output or a loaded file; `path` names it in errors)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: format must be {FORMAT!r}")
    head = _vector(data.get("head") or {}, "coefficients", f"{path}: head")
    router = data.get("router") or {}
    coef = _vector(router, "coefficients", f"{path}: router", len(head))
    if not isinstance(router.get("intercept"), (int, float)):
        raise ValueError(f"{path}: router.intercept must be a number")
    cut = router.get("threshold", 0.5) if threshold is None else threshold
    if not isinstance(data.get("embedder"), str):
        raise ValueError(f"{path}: embedder must name a sentence-embedding model")
    return SafetyHead(data["embedder"], head, coef, float(router["intercept"]), float(cut),
                      {k: v for k, v in data.items() if k not in ("head", "router")})


def fit(pairs: list, ordinary_prompts: list[str], embedder: str, regularization: float = 1.0) -> dict:
    """Head and router weights fitted on decisive gold pairs (`GoldPair`) and ordinary prompts."""
    from sklearn.linear_model import LogisticRegression

    from pipeline.filters.embed import embed_texts

    pairs = [p for p in pairs if p.label in ("a", "b")]
    if len(pairs) < 10 or len(ordinary_prompts) < 10:
        raise ValueError(f"safety head: {len(pairs)} decisive pairs and {len(ordinary_prompts)} "
                         "ordinary prompts; at least 10 of each are needed")
    emb = embed_texts([r for p in pairs for r in (p.response_a, p.response_b)], embedder)
    x = emb[0::2] - emb[1::2]
    y = np.asarray([p.label == "a" for p in pairs], int)
    head = LogisticRegression(C=regularization, fit_intercept=False, max_iter=5000).fit(
        np.vstack([x, -x]), np.concatenate([y, 1 - y]))
    positives = [last_user_turn(p.prompt) for p in pairs]
    xr = embed_texts(positives + list(ordinary_prompts), embedder)
    router = LogisticRegression(C=regularization, class_weight="balanced", max_iter=5000).fit(
        xr, np.r_[np.ones(len(positives)), np.zeros(len(ordinary_prompts))])
    return {"format": FORMAT, "embedder": embedder, "regularization": regularization,
            "head": {"coefficients": [round(float(c), 6) for c in head.coef_[0]], "decisive_pairs": len(pairs)},
            "router": {"coefficients": [round(float(c), 6) for c in router.coef_[0]],
                       "intercept": round(float(router.intercept_[0]), 6), "threshold": 0.5,
                       "positives": len(positives), "negatives": len(ordinary_prompts)}}


def prompt_texts(path: Path) -> list[str]:
    """The user prompts of a JSONL file: each row's `instruction`, `prompt` or first of `turns`."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").split("\n"):  # not splitlines: U+2028 in strings
        if line.strip():
            row = json.loads(line)
            text = row.get("instruction") or row.get("prompt") or (row.get("turns") or [None])[0]
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{path}: a row has no instruction, prompt or turns")
            out.append(text)
    return out


def main(argv: list[str] | None = None) -> None:
    from pipeline.annotate.gold import load_gold
    from pipeline.filters.embed import DEFAULT_MODEL
    from pipeline.ids import file_sha256

    ap = argparse.ArgumentParser(prog="python -m pipeline.annotate.safety_head", description=__doc__.split("\n")[0])
    ap.add_argument("--gold", type=Path, required=True, help="harmlessness gold pairs (eval-annotator formats)")
    ap.add_argument("--hold-out", type=int, default=100,
                    help="pairs of the gold file's seeded sample (eval-annotator --limit) never fitted on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompts", type=Path, nargs="+", required=True, help="JSONL files of ordinary user prompts")
    ap.add_argument("--licence", action="append", default=[], help="licence note of a source, for the file")
    ap.add_argument("--embedder", default=DEFAULT_MODEL)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    every, _ = load_gold(args.gold, seed=args.seed)
    held = {p.source_row for p in load_gold(args.gold, limit=args.hold_out, seed=args.seed)[0]}
    negatives = {str(p.name): prompt_texts(p) for p in args.prompts}
    out = fit([p for p in every if p.source_row not in held], [t for v in negatives.values() for t in v],
              args.embedder)
    out["fitted_on"] = {
        "pairs": {"file": args.gold.name, "sha256": file_sha256(args.gold),
                  "held_out": {"limit": args.hold_out, "seed": args.seed, "source_rows": sorted(held)}},
        "ordinary_prompts": [{"file": name, "sha256": file_sha256(p), "rows": len(negatives[name])}
                             for name, p in zip(negatives, args.prompts)],
        "licences": args.licence}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"{args.out}: head on {out['head']['decisive_pairs']} pairs, router on "
          f"{out['router']['positives']} + {out['router']['negatives']} prompts")


if __name__ == "__main__":
    main()
