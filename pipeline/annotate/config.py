"""The `annotate` section of a recipe: which annotator scores candidates, with which models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline.config import Strict

Method = Literal["judge_pointwise", "judge_pairwise", "density_ratio", "reward_model", "ensemble"]

# The roles each method needs in `models`.
ROLES: dict[str, tuple[str, ...]] = {
    "judge_pointwise": ("judge",),
    "judge_pairwise": ("judge",),
    "density_ratio": ("strong", "weak"),
    "reward_model": ("reward",),
    "ensemble": ("strong", "weak"),  # by default; its features decide (`ensemble_roles`)
}
# The ensemble's features (pipeline.annotate.ensemble.FEATURES), listed here so the schema names them.
Feature = Literal["cdr_sum", "cdr_tokens", "strong_tokens", "weak_tokens", "judge", "log_chars"]
RATIO_FEATURES = ("cdr_sum", "cdr_tokens", "strong_tokens", "weak_tokens")  # one density-ratio pass
JUDGE_FEATURE = "judge"  # the pointwise judge's rating


def ensemble_roles(features: list[str]) -> tuple[str, ...]:
    """The models an ensemble's features need: strong and weak for the density-ratio features,
    the judge for its rating (log_chars needs none)."""
    ratio = ("strong", "weak") if any(f in RATIO_FEATURES for f in features) else ()
    return ratio + (("judge",) if JUDGE_FEATURE in features else ())

# UltraFeedback's four aspects; any other aspect name is shown to the judge as written.
ASPECTS = {
    "instruction_following": "how well the response follows the user's instructions and intent",
    "honesty": "whether the response is honest about what it knows and expresses uncertainty "
               "where appropriate",
    "truthfulness": "whether the response is factually correct and free of hallucinations",
    "helpfulness": "how informative, relevant and useful the response is",
}


class ModelRef(Strict):
    engine: Literal["transformers", "vllm", "http"] = Field(
        "transformers", description="Engine kind (pipeline.engines.registry)")
    model: str = Field(description="Local model directory, packaged model name or served model name")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="Engine keyword arguments (dtype, base_urls, "
                                                "api_key_env: NAME of the API key's variable, ...)")


class AnnotatorModels(Strict):
    judge: ModelRef | None = None
    strong: ModelRef | None = Field(None, description="Density ratio: numerator model")
    weak: ModelRef | None = Field(None, description="Density ratio: denominator model")
    reward: ModelRef | None = Field(None, description="Sequence-classification reward model")


class CriteriaDomain(Strict):
    keywords: list[str] = Field(min_length=1, description="Words in the last user turn that route here")
    prompt: str = Field(min_length=1, description="Criteria system prompt for this domain")


class Criteria(Strict):
    """Criteria shown to the strong model (density ratio) or the judge; routed per domain."""

    default: str | None = Field(None, description="Criteria when no domain matches")
    domains: dict[str, CriteriaDomain] = Field(default_factory=dict)


class Templates(Strict):
    """Judge prompt templates; paths are relative to the recipe file."""

    pointwise: str | None = Field(None, description="Path of a Jinja (.jinja/.j2) or format-string "
                                                    "(.txt) template; default: the packaged one")
    pairwise: str | None = None


class GateConfig(Strict):
    """`annotate.gate`: measure the annotator on human-labelled pairs before it labels anything."""

    gold: str = Field(description="gold pairs (any format `eval-annotator --gold` reads), relative to the recipe")
    format: str = Field("auto", description="the gold file's format (as eval-annotator --format)")
    min_accuracy: float = Field(ge=0, le=1, description="accuracy (excluding ties) the annotator must reach")
    limit: int | None = Field(100, ge=1, description="fixed random sample of this many gold pairs")
    seed: int = Field(0, description="seed of the sample and of the A/B order")
    resamples: int = Field(1000, ge=0, description="bootstrap resamples of the CI")


class EnsembleConfig(Strict):
    """`annotate.ensemble`: the features combined and the gold pairs their weights are fitted on (or
    a fit file written earlier, `weights`)."""

    gold: list[str] = Field(default_factory=list, description="gold pair files (any format `eval-annotator "
                                                              "--gold` reads), relative to the recipe; pooled "
                                                              "for the fit")
    weights: str | None = Field(None, description="instead of gold: a fit file (`python -m "
                                                  "pipeline.annotate.ensemble_fit`), relative to the recipe; "
                                                  "its weights score as they are, nothing is fitted")
    format: str = Field("auto", description="the gold files' format (as eval-annotator --format)")
    limit: int | None = Field(100, ge=2, description="fixed random sample of this many pairs per gold file")
    seed: int = Field(0, description="seed of the samples, the A/B order and the folds")
    features: list[Feature] = Field(["cdr_sum", "cdr_tokens", "strong_tokens", "weak_tokens", "log_chars"],
                                    min_length=1, description="scores of each response combined "
                                                              "(pipeline.annotate.ensemble.FEATURES)")
    length_controlled: bool = Field(False, description="score without the log_chars term (fitted with it, "
                                                       "dropped at annotation: AlpacaEval's length control)")
    folds: int = Field(5, ge=2, le=20, description="cross-validation folds of the reported accuracy")
    regularization: float = Field(1.0, gt=0, description="inverse L2 strength (C) of the logistic regression")
    resamples: int = Field(1000, ge=0, description="bootstrap resamples of the reported CIs")

    @model_validator(mode="after")
    def _source(self) -> "EnsembleConfig":
        if bool(self.gold) == (self.weights is not None):
            raise ValueError("give either gold (files to fit on) or weights (a fit file), not both or neither")
        return self


class SafetyHeadConfig(Strict):
    """`annotate.safety_head`: on prompts that read like red-team attempts, a harmlessness reward
    head scores instead of the density ratio (pipeline.annotate.safety_head)."""

    path: str = Field(description="the head's JSON file (weights, embedder, what it was fitted on), "
                                  "relative to the recipe")
    threshold: float | None = Field(None, gt=0, lt=1, description="route to the head when P(red-team "
                                                                  "prompt) >= this; default: the file's")


class AnnotateConfig(Strict):
    method: Method = "judge_pairwise"
    models: AnnotatorModels = AnnotatorModels()
    # judges
    aspects: list[str] = Field(default_factory=list,
                               description="Per-aspect ratings (UltraFeedback); empty: one overall rating")
    rating_min: int = Field(1, ge=0, le=9)
    rating_max: int = Field(5, ge=1, le=9, description="Single digits so a rating is one token")
    rationale: bool = Field(True, description="Ask the judge for a short rationale before its verdict")
    both_orders: bool = Field(True, description="Pairwise: judge (A,B) and (B,A); disagreement is a tie")
    expectation: bool = Field(True, description="Score by the expectation over rating-token "
                                                "probabilities when the engine returns top-k log-probs")
    top_logprobs: int = Field(20, ge=1, le=20)
    expectation_tie_band: float = Field(0.05, ge=0, lt=0.5,
                                        description="Pairwise: |P(A wins) - 0.5| below this is a tie")
    max_tokens: int = Field(256, ge=1, description="Judge output budget")
    temperature: float = Field(0.0, ge=0)
    retries: int = Field(2, ge=0, le=10, description="Re-asks after an unparseable judge output")
    retry_temperature: float = Field(0.7, ge=0)
    reference_label: str | None = Field(
        "reference", description="Candidates with this source_label are shown to the judge as the "
                                 "reference answer for the other candidates of their conversation")
    templates: Templates = Templates()
    # density ratio
    length_norm: Literal["none", "tokens", "chars"] = Field(
        "none", description="tokens: mean log-prob per token of each model; chars: per character")
    criteria: Criteria = Criteria()
    ensemble: EnsembleConfig | None = Field(None, description="method ensemble: features and the gold "
                                                               "pairs their weights are fitted on")
    safety_head: SafetyHeadConfig | None = Field(None, description="methods density_ratio, judge_pointwise and "
                                                                   "ensemble: a harmlessness head scores red-team "
                                                                   "prompts instead")
    # every method
    tie_margin: float = Field(0.0, ge=0, description="Score differences up to this are ties")
    batch_size: int = Field(32, ge=1, description="Requests per engine call")
    seed: int = 0
    gate: GateConfig | None = Field(None, description="stop the build before annotating if the annotator "
                                                      "agrees with the gold labels less than min_accuracy")

    @model_validator(mode="after")
    def _check(self) -> "AnnotateConfig":
        if self.rating_min >= self.rating_max:
            raise ValueError("rating_min must be below rating_max")
        if (self.method == "ensemble") != (self.ensemble is not None):
            raise ValueError("method ensemble needs an ensemble section, and only it takes one")
        if self.ensemble is not None and not self.roles():
            raise ValueError("ensemble.features: at least one model's score is needed besides log_chars "
                             f"(one of {', '.join(RATIO_FEATURES + (JUDGE_FEATURE,))})")
        missing = [r for r in self.roles() if getattr(self.models, r) is None]
        if missing:
            why = f" for ensemble.features {self.ensemble.features}" if self.ensemble is not None else ""
            raise ValueError(f"method {self.method} needs models.{', models.'.join(missing)}{why}")
        if self.ensemble is not None and len(set(self.ensemble.features)) != len(self.ensemble.features):
            raise ValueError("ensemble.features: a feature is listed twice")
        if self.ensemble is not None and self.ensemble.length_controlled and "log_chars" not in self.ensemble.features:
            raise ValueError("ensemble.length_controlled needs log_chars among ensemble.features")
        if self.safety_head is not None and self.method not in ("density_ratio", "judge_pointwise", "ensemble"):
            raise ValueError("safety_head: only methods density_ratio, judge_pointwise and ensemble take one")
        if len(set(self.aspects)) != len(self.aspects):
            raise ValueError("aspects: an aspect is listed twice")
        return self

    def roles(self) -> tuple[str, ...]:
        if self.method == "ensemble" and self.ensemble is not None:
            return ensemble_roles(self.ensemble.features)
        return ROLES[self.method]

    def content_key(self) -> dict:
        """The config as cache keys of its measurements (gate report, ensemble fit) see it: each
        model by its identity (a local directory by its files, `engines.identity`) and each file it
        names (templates, safety head, gold files: the recipe's PATH_FIELDS) by its sha256, so a
        model or file rewritten in place is measured again."""
        from pipeline.recipe import Recipe, keyed_models  # the recipe's key mechanism, for one section

        data = keyed_models({"annotate": self.model_dump(mode="json")})
        return {**data["annotate"], "files": Recipe.file_hashes(data)}


def route_criteria(criteria: Criteria, prompt: list[dict]) -> tuple[str | None, str | None]:
    """(domain, criteria text) for a prompt: the domain whose keywords occur most often in the
    last user turn (ties: the first listed), else the default."""
    import re

    from pipeline.engines.chat import last_user_turn

    words = re.findall(r"\w+", last_user_turn(prompt).lower())
    best, best_hits = None, 0
    for name, domain in criteria.domains.items():
        keys = {k.lower() for k in domain.keywords}
        hits = sum(1 for w in words if w in keys)
        if hits > best_hits:
            best, best_hits = name, hits
    if best is not None:
        return best, criteria.domains[best].prompt
    return ("default" if criteria.default else None), criteria.default
