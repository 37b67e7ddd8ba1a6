"""The generate stage: k candidate responses per conversation from a pool of models.

Each sample is its own request (n=1, seed = model seed + sample index), keyed by content in the
request cache and stored the moment it finishes: a killed run, rerun, asks the engines only for
what is missing, and the same inputs + seed give the same candidates. The source's own responses
can join the pool as off-policy candidates (a SIMPLEMIX-style mix, `origin = off_policy`).

Empty and truncated generations are kept and flagged; a conversation that ends up with no
candidate at all is dropped with a reason. All candidates of one input shard go into one output
shard. Engines are opened by the caller, once per stage run (`engines` maps model name -> engine).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from pipeline.cache import RequestCache, request_key
from pipeline.engines.base import GENERATE, ChatRequest, Completion, Engine, RequestRejected, \
    SamplingParams, require
from pipeline.engines.chat import message_tuples
from pipeline.ids import canonical_json, content_id
from pipeline.progress import report
from pipeline.config import Strict
from pipeline.shards import DroppedWriter, iter_rows
from pipeline.stats import StageStats
from pipeline.tables import CANDIDATE

log = logging.getLogger(__name__)

ON_POLICY = "on_policy"
OFF_POLICY = "off_policy"


class GeneratorSpec(Strict):
    """One model of the pool and how to sample it."""

    name: str = Field(description="Name of the model in the pool (the candidates' `model` column)")
    model: str | None = Field(
        None, description="Registry name, local directory or served model name (default: name)")
    engine: Literal["vllm", "transformers", "http"] = "vllm"
    k: int = Field(4, ge=1, le=64, description="Samples per conversation")
    temperature: float = Field(0.8, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1)
    seed: int | None = Field(0, description="Sample i uses seed + i; null: unseeded")
    stop: list[str] = []
    base_urls: list[str] = Field([], description="http: OpenAI-compatible servers, round-robin")
    api_key_env: str | None = Field(
        None, description="http: NAME of the environment variable holding the API key")
    max_concurrency: int = Field(16, ge=1, description="http: requests in flight")
    options: dict[str, Any] = Field(
        default_factory=dict, description="engine keyword arguments: vllm/transformers (dtype, max_model_len, ...), "
                                  "http (timeout_s, max_attempts, retry_budget_s, backoff_s)")

    @model_validator(mode="after")
    def _http_fields(self) -> "GeneratorSpec":
        if self.engine == "http" and not self.base_urls:
            raise ValueError(f"model {self.name!r}: engine http needs base_urls")
        if self.engine != "http" and (self.base_urls or self.api_key_env):
            raise ValueError(f"model {self.name!r}: base_urls/api_key_env are for engine http")
        return self

    def engine_spec(self) -> tuple[str, str, dict]:
        """(model, engine kind, options) for `engines.registry.open_engines`."""
        if self.engine == "http":
            return self.model or self.name, "http", {
                "base_urls": self.base_urls, "api_key_env": self.api_key_env,
                "max_concurrency": self.max_concurrency, **self.options}
        return self.model or self.name, self.engine, dict(self.options)

    def params(self, sample_index: int) -> SamplingParams:
        seed = None if self.seed is None else self.seed + sample_index
        return SamplingParams(n=1, temperature=self.temperature, top_p=self.top_p,
                              max_tokens=self.max_tokens, seed=seed, stop=tuple(self.stop))


class GenerateConfig(Strict):
    models: list[GeneratorSpec] = []
    include_source_responses: bool = Field(
        False, description="Add the source's own responses as off-policy candidates")
    batch_size: int = Field(64, ge=1, description="Requests handed to an engine at once")

    @model_validator(mode="after")
    def _pool(self) -> "GenerateConfig":
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("generate.models: the same name is listed twice")
        if not self.models and not self.include_source_responses:
            raise ValueError("generate: no models and include_source_responses is false")
        return self


def engine_kind(engine: Engine) -> str:
    return getattr(engine, "kind", type(engine).__name__)


@dataclass
class _Job:
    key: str
    engine_name: str
    request: ChatRequest


def _params_json(p: SamplingParams) -> dict:
    return {"temperature": p.temperature, "top_p": p.top_p, "max_tokens": p.max_tokens,
            "seed": p.seed, "stop": list(p.stop)}


def _run_jobs(engine: Engine, jobs: list[_Job], cache: RequestCache, results: dict,
              failures: dict) -> None:
    """Run jobs on one engine, storing each result as it arrives. A request the engine rejects
    (RequestRejected) is isolated and recorded in `failures`; the others still run."""
    done: set[str] = set()

    def store(job: _Job, completions: list[Completion]) -> None:
        value = dataclasses.asdict(completions[0])
        cache.put(job.key, value)
        results[job.key] = value
        done.add(job.key)

    requests = [j.request for j in jobs]
    try:
        if hasattr(engine, "generate_iter"):  # results one by one, as they finish
            for i, completions in engine.generate_iter(requests):
                if isinstance(completions, RequestRejected):
                    failures[jobs[i].key] = str(completions)
                else:
                    store(jobs[i], completions)
        else:
            outputs = engine.generate(requests)
            cache.put_many((j.key, dataclasses.asdict(c[0])) for j, c in zip(jobs, outputs))
            for j, c in zip(jobs, outputs):
                results[j.key] = dataclasses.asdict(c[0])
                done.add(j.key)
    except RequestRejected as err:  # engines without generate_iter reject the whole batch
        if len(jobs) == 1:
            failures[jobs[0].key] = str(err)
            return
        for job in jobs:  # isolate the refused request(s); the others still run
            if job.key not in done:
                _run_jobs(engine, [job], cache, results, failures)


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _flags(text: str, finish_reason: str) -> list[str]:
    flags = []
    if not text.strip():
        flags.append("empty")
    if finish_reason == "length":
        flags.append("truncated")
    return flags


def _lineage(row: dict) -> dict:
    """The input file and row a candidate's conversation was ingested from."""
    return {"source": row.get("source"), "source_row": row.get("source_row")}


def _off_policy(row: dict) -> list[dict]:
    out = []
    for j, r in enumerate(row.get("responses") or []):
        text = r.get("content") or ""
        model = r.get("model") or "source"
        out.append({
            "candidate_id": content_id("k", row["id"], model, OFF_POLICY, r.get("label"), j, text),
            "conversation_id": row["id"], **_lineage(row), "prompt": row["prompt"], "response": text,
            "model": model, "origin": OFF_POLICY, "source_label": r.get("label"),
            "sample_index": j, "params": None, "prompt_tokens": None, "completion_tokens": None,
            "finish_reason": "source", "flags": _flags(text, "source"), "latency_s": None,
        })
    return out


def _on_policy(row: dict, spec: GeneratorSpec, sample_index: int, params: SamplingParams,
               result: dict) -> dict:
    text = result["text"]
    params_json = canonical_json(_params_json(params))
    return {
        "candidate_id": content_id("k", row["id"], spec.name, ON_POLICY, params_json, sample_index,
                                   text),
        "conversation_id": row["id"], **_lineage(row), "prompt": row["prompt"], "response": text,
        "model": spec.name, "origin": ON_POLICY, "source_label": None,
        "sample_index": sample_index, "params": params_json,
        "prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"],
        "finish_reason": result["finish_reason"],
        "flags": _flags(text, result["finish_reason"]), "latency_s": result["latency_s"],
    }


def output_name(in_shard: Path) -> str:
    """The output shard of an input shard (one output part per input part)."""
    name = Path(in_shard).name
    return name if name.startswith("part-") else f"part-{Path(in_shard).stem}.parquet"


def generate_shard(in_shard: Path, out_dir: Path, config: GenerateConfig,
                   engines: dict[str, Engine], cache: RequestCache, *, stage: str) -> StageStats:
    """Conversation shard -> one candidate shard (`out_dir/part-*.parquet`) + dropped rows."""
    for spec in config.models:
        if spec.name not in engines:
            raise ValueError(f"{stage}: no engine opened for model {spec.name!r}")
        require(spec.name, engines[spec.name].capabilities, {GENERATE})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = StageStats(stage)
    dropped = DroppedWriter(out_dir, stage)
    dropped.prefix = f"dropped-{stage}-{Path(in_shard).stem}"

    # plan: one job per (conversation, model, sample)
    conversations: list[tuple[dict, list[tuple[GeneratorSpec, int, SamplingParams, str]]]] = []
    jobs: dict[str, _Job] = {}
    for row in iter_rows(Path(in_shard)):
        prompt = row.get("prompt") or []
        if not prompt or prompt[-1].get("role") != "user":
            dropped.drop("no_prompt", row=row, detail="prompt must end with a user message",
                         source=row.get("source"), source_row=row.get("source_row"),
                         row_id=row.get("id"), conversation_id=row.get("id"))
            stats.drop("no_prompt")
            continue
        messages = message_tuples(prompt)
        planned = []
        for spec in config.models:
            engine = engines[spec.name]
            for i in range(spec.k):
                params = spec.params(i)
                key = request_key(engine_kind(engine), engine.model_id, _params_json(params),
                                  messages, None, i)
                jobs.setdefault(key, _Job(key, spec.name, ChatRequest(messages, params)))
                planned.append((spec, i, params, key))
        conversations.append((row, planned))

    # run what the cache does not hold, engine by engine, storing results as they finish
    results = cache.get_many(jobs)
    failures: dict[str, str] = {}
    finished = 0
    for spec in config.models:
        todo = [j for j in jobs.values() if j.engine_name == spec.name and j.key not in results]
        for batch in _chunks(todo, config.batch_size):
            _run_jobs(engines[spec.name], batch, cache, results, failures)
            ready = sum(all(key in results or key in failures for *_, key in planned)
                        for _, planned in conversations)
            if ready > finished:
                report(stage, ready - finished)
                finished = ready

    # assemble: all candidates of a conversation, in a fixed order
    rows: list[dict] = []
    for row, planned in conversations:
        candidates = _off_policy(row) if config.include_source_responses else []
        errors = []
        for spec, i, params, key in planned:
            if key in results:
                candidates.append(_on_policy(row, spec, i, params, results[key]))
            else:
                errors.append(f"{spec.name}[{i}]: {failures.get(key, 'no result')}")
        if errors and candidates:
            log.warning("conversation %s: %d of %d requests failed (first: %s)", row["id"],
                        len(errors), len(planned), errors[0])
        where = {"source": row.get("source"), "source_row": row.get("source_row"),
                 "row_id": row["id"], "conversation_id": row["id"]}
        if not candidates:
            reason = "generation_failed" if errors else "no_candidates"
            dropped.drop(reason, row=row, detail="; ".join(errors)[:2000], **where)
            stats.drop(reason)
            continue
        rows.extend(candidates)
        stats.keep(outputs=len(candidates))
    if stats.rows_in > finished:
        report(stage, stats.rows_in - finished)

    pq.write_table(pa.Table.from_pylist(rows, schema=CANDIDATE), out_dir / output_name(in_shard),
                   compression="zstd")
    dropped.close()
    return stats.check()
