"""The one engine protocol every model-calling stage uses.

An engine declares its `capabilities`; a recipe that needs one it lacks fails before any work
(`require`). Implementations: vLLM offline (`vllm_engine`), OpenAI-compatible HTTP (`http_engine`),
transformers (`hf_engine`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

GENERATE = "generate"  # chat completions, n samples
SCORE = "score"  # teacher-forced log-probs of a response under a prompt
TOP_LOGPROBS = "top_logprobs"  # top-k log-probs of generated tokens (judge expectation scoring)
HIDDEN_STATES = "hidden_states"  # final-layer hidden states of response tokens (CHES)
REWARD = "reward"  # sequence-classification reward model score

CAPABILITIES = (GENERATE, SCORE, TOP_LOGPROBS, HIDDEN_STATES, REWARD)


class UnsupportedCapability(ValueError):
    pass


class RequestRejected(ValueError):
    """The engine refused this one request (prompt too long, invalid parameters): retrying will
    not help, but other requests can go on."""


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = 0
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # top-k log-probs per generated token (None: none)


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[tuple[str, str], ...]  # ((role, content), ...)
    params: SamplingParams = SamplingParams()
    system: str | None = None  # extra system prompt prepended (e.g. judge instructions)


@dataclass
class Completion:
    text: str
    finish_reason: str  # stop | length
    prompt_tokens: int
    completion_tokens: int
    # per generated token: {token_text: logprob} of the top-k alternatives (when requested)
    top_logprobs: list[dict[str, float]] | None = None
    latency_s: float = 0.0


@dataclass(frozen=True)
class ScoreRequest:
    prompt: tuple[tuple[str, str], ...]  # chat messages; the chat template is applied
    response: str  # assistant reply whose tokens are scored
    system: str | None = None  # optional system prompt (CDR criteria for the strong model)


@dataclass
class TokenScores:
    token_logprobs: list[float]  # log p(token_i | prefix) for each response token
    num_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_tokens = len(self.token_logprobs)

    @property
    def total(self) -> float:
        return float(sum(self.token_logprobs))


@runtime_checkable
class Engine(Protocol):
    """What stages call. Methods an engine lacks raise UnsupportedCapability."""

    model_id: str  # stable identifier of the model (used in cache keys and provenance)
    capabilities: frozenset[str]

    def generate(self, requests: list[ChatRequest]) -> list[list[Completion]]:
        """One list of `params.n` completions per request, in request order."""

    def score(self, requests: list[ScoreRequest]) -> list[TokenScores]:
        """Teacher-forced log-probs of each response's tokens."""

    def hidden_states(self, requests: list[ScoreRequest]) -> list["object"]:
        """Final-layer hidden states (numpy [num_response_tokens, hidden]) at the positions that
        predict each response token."""

    def reward(self, requests: list[ScoreRequest]) -> list[float]:
        """Reward-model scores."""

    def close(self) -> None:
        """Release the model (GPU memory, server connections)."""


def require(engine_name: str, capabilities: frozenset[str], needed: set[str]) -> None:
    missing = sorted(set(needed) - set(capabilities))
    if missing:
        raise UnsupportedCapability(
            f"engine {engine_name!r} does not support {', '.join(missing)} "
            f"(it supports {', '.join(sorted(capabilities))})")


def release_memory() -> None:
    """After an engine closes: collect its objects and hand glibc's freed heap back to the OS
    (`malloc_trim`; measured on the 0.5B vLLM engine: RSS 1.9 -> 1.2 GiB after close), so the
    next stage's engine or another build on the machine gets it. A no-op where libc has no trim."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
