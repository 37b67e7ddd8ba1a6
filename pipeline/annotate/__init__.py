"""Annotation: LLM judges (pointwise, pairwise in both orders, expectation scoring), density-ratio
reward (CDR), reward models, and the annotator evaluation against human labels."""

from pipeline.annotate.config import AnnotateConfig
from pipeline.annotate.stage import annotate_shard

__all__ = ["AnnotateConfig", "annotate_shard"]
