"""OpenAI-compatible HTTP engine: a `vllm serve` fleet or any server speaking the OpenAI protocol.

An async core (httpx, at most `max_concurrency` requests in flight) runs on a private event-loop
thread; the sync methods of the engine protocol submit to it, so stages stay plain functions.

Fleet: each attempt goes to the healthy server with the fewest outstanding requests (ties: the
one sent the fewest so far, then list order), at most `max_concurrency_per_server` at a time, and
preferring servers this request has not tried yet. A connection error, timeout, 5xx or malformed
answer counts against a server; after `unhealthy_after` in a row it is taken out, the request is
retried on another server at once, and `health_path` (`/v1/models`) is probed with exponential
backoff until it answers 200, which brings the server back. With every server out, all are tried
(panic mode: one server behaves as it always did), and an answer from one brings it back.
`generate` and `score` return results in request order, so a fleet gives the same output as one
server.

Transient failures are retried with exponential backoff (tenacity): 429 (honouring Retry-After),
5xx, connection errors, timeouts, dropped connections and malformed responses. Other 4xx are the
request's fault and raise `RequestRejected` at once. When the retry budget is spent,
`EngineUnavailable` says so (no hang). Options are validated by `HttpOptions`.

The API key is read from the environment variable named by `api_key_env` at each request and is
never stored on the engine, logged, or put in any message.

Scoring sends the prompt + response token ids (built by `pipeline.engines.chat`, exactly as the
local engines build them) to `/v1/completions` with `max_tokens: 1` and vLLM's `prompt_logprobs: 0`
(`echo: true, logprobs: 0` as the OpenAI-style fallback). Token ids come from the model's local
tokenizer (`tokenizer=`), or from vLLM's `/tokenize` endpoint for chat-template models.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from pydantic import Field, ValidationError, field_validator
from tenacity import (AsyncRetrying, RetryError, retry_if_exception_type, stop_after_attempt,
                      stop_after_delay, wait_exponential, wait_exponential_jitter)

from pipeline.config import Strict, format_error
from pipeline.engines import chat
from pipeline.engines.base import (GENERATE, SCORE, TOP_LOGPROBS, ChatRequest, Completion,
                                   RequestRejected, ScoreRequest, TokenScores,
                                   UnsupportedCapability)

log = logging.getLogger(__name__)

KIND = "http"


class EngineUnavailable(RuntimeError):
    """The server(s) kept failing for longer than the retry budget."""


class _Transient(Exception):
    """A failure worth retrying (429, 5xx, network, timeout, malformed response); `failover`: the
    server was taken out and another is up, so retry there without waiting."""

    def __init__(self, message: str, retry_after: float | None = None, failover: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.failover = failover


class HttpOptions(Strict):
    """The HTTP engine's settings (a recipe's http model fields and `options`)."""

    base_urls: list[str] = Field(min_length=1, description="OpenAI-compatible servers (with or "
                                                           "without the trailing /v1)")
    api_key_env: str | None = Field(None, description="NAME of the variable holding the API key")
    tokenizer: str | Path | None = Field(None, description="Local tokenizer for scoring "
                                                           "(default: the server's /tokenize)")
    model_id: str | None = None
    max_concurrency: int = Field(16, ge=1, description="Requests in flight over the whole fleet")
    max_concurrency_per_server: int | None = Field(
        None, ge=1, description="Requests in flight on one server (default: no limit but the fleet's)")
    timeout_s: float = Field(120.0, gt=0, description="Longest wait for one complete answer")
    connect_timeout_s: float = Field(10.0, gt=0)
    max_attempts: int = Field(8, ge=1, description="Attempts per request, over all servers")
    backoff_s: float = Field(0.5, ge=0)
    max_backoff_s: float = Field(30.0, ge=0)
    retry_budget_s: float = Field(600.0, gt=0, description="Give up on a request after this long")
    unhealthy_after: int = Field(1, ge=1, description="Failures in a row that take a server out")
    health_path: str = Field("/v1/models", pattern=r"^/",
                             description="Probed (GET, 200 = healthy) to bring a server back")
    probe_interval_s: float = Field(1.0, gt=0, description="First probe delay; doubles per failed probe")
    max_probe_interval_s: float = Field(30.0, gt=0)

    @field_validator("base_urls", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else list(value) if isinstance(value, tuple) else value


@dataclasses.dataclass
class ServerState:
    """One server of the fleet as the engine sees it."""

    url: str
    healthy: bool = True
    outstanding: int = 0  # attempts in flight now
    sent: int = 0  # attempts dispatched so far
    answered: int = 0  # 2xx answers parsed
    failures: int = 0  # failed attempts in a row


def _retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _root(url: str) -> str:
    """Server root of a base URL given with or without the trailing `/v1`."""
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


class HttpEngine:
    """Engine protocol over `/v1/chat/completions` (generate) and `/v1/completions` (score)."""

    kind = KIND
    OFFERS = frozenset({GENERATE, SCORE, TOP_LOGPROBS})

    def __init__(self, model: str, base_urls: list[str] | str, **options: Any):
        """`options`: see `HttpOptions` (a bad one raises ValueError naming it)."""
        try:
            opts = HttpOptions(base_urls=base_urls, **options)
        except ValidationError as err:
            raise ValueError(format_error("http engine", err).replace("\n", "; ")) from None
        if opts.api_key_env is not None and opts.api_key_env not in os.environ:
            raise ValueError(f"environment variable {opts.api_key_env!r} (the API key) is not set")
        self.options = opts
        self.model = model  # the name the server knows the model by
        self.model_id = opts.model_id or model
        self.base_urls = [_root(u) for u in opts.base_urls]
        self.api_key_env = opts.api_key_env
        self.max_concurrency = opts.max_concurrency
        self.timeout_s = opts.timeout_s
        self.max_attempts = opts.max_attempts
        self.max_backoff_s = opts.max_backoff_s
        self.retry_budget_s = opts.retry_budget_s
        self.capabilities = self.OFFERS
        self._servers = [ServerState(u) for u in self.base_urls]
        self._probes: dict[int, asyncio.Task] = {}
        self._backoff = wait_exponential_jitter(multiplier=opts.backoff_s, jitter=opts.backoff_s,
                                                max=opts.max_backoff_s)
        self._tokenizer = None
        if opts.tokenizer is not None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(opts.tokenizer))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="http-engine", daemon=True)
        self._thread.start()
        self._timeout = httpx.Timeout(opts.timeout_s, connect=opts.connect_timeout_s)
        self._client: httpx.AsyncClient = self._run(self._open())
        self._sem: asyncio.Semaphore = self._run(self._semaphore())
        self._changed: asyncio.Event = self._run(self._event())

    def __repr__(self) -> str:
        return (f"HttpEngine(model={self.model!r}, base_urls={self.base_urls!r}, "
                f"api_key_env={self.api_key_env!r})")

    __str__ = __repr__

    # -- event loop plumbing -------------------------------------------------------------------

    async def _open(self) -> httpx.AsyncClient:
        connections = self.max_concurrency + len(self._servers)  # + one health probe per server
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(timeout=self._timeout, limits=limits)

    async def _semaphore(self) -> asyncio.Semaphore:
        return asyncio.Semaphore(self.max_concurrency)

    async def _event(self) -> asyncio.Event:
        return asyncio.Event()

    def _run(self, coro):
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def _each(self, make: Callable[[int], Any], count: int,
              yield_rejected: bool = False) -> Iterator[tuple[int, Any]]:
        """Run `make(i)` for i < count concurrently; yield (i, result) as each finishes.
        The first error raises (and cancels the rest), except that with `yield_rejected` a
        RequestRejected is yielded as that request's result."""
        done: queue.Queue = queue.Queue()

        async def one(i: int) -> None:
            try:
                done.put((i, await make(i), None))
            except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                done.put((i, None, err))

        async def all_of() -> None:
            await asyncio.gather(*(one(i) for i in range(count)))

        future = asyncio.run_coroutine_threadsafe(all_of(), self._loop)
        try:
            for _ in range(count):
                i, result, err = done.get()
                if isinstance(err, RequestRejected) and yield_rejected:
                    result = err
                elif err is not None:
                    raise err
                yield i, result
        finally:
            future.cancel()

    # -- one HTTP call with retries ------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        if self.api_key_env is None:
            return {}
        key = os.environ.get(self.api_key_env)
        if not key:
            raise EngineUnavailable(f"environment variable {self.api_key_env!r} (the API key) is not set")
        return {"Authorization": f"Bearer {key}"}

    def _wait(self, state) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            return min(max(exc.retry_after, self._backoff(state)), self.max_backoff_s)
        if isinstance(exc, _Transient) and exc.failover:
            return 0.0
        return self._backoff(state)

    # -- the fleet: dispatch by load, take failing servers out, probe them back ------------------

    def servers(self) -> list[ServerState]:
        """A snapshot of each server's state, in `base_urls` order."""
        async def snapshot() -> list[ServerState]:
            return [dataclasses.replace(s) for s in self._servers]

        return [dataclasses.replace(s) for s in self._servers] if self._loop.is_closed() \
            else self._run(snapshot())

    def _notify(self) -> None:
        """Wake every request waiting for a server (a slot freed, a server out or back)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _pick(self, tried: set[int]) -> int | None:
        limit = self.options.max_concurrency_per_server
        up = [i for i, s in enumerate(self._servers) if s.healthy] or range(len(self._servers))
        free = [i for i in up if limit is None or self._servers[i].outstanding < limit]
        if not free:
            return None
        return min(free, key=lambda i: (i in tried, self._servers[i].outstanding,
                                        self._servers[i].sent, i))

    async def _acquire(self, tried: set[int]) -> int:
        while (i := self._pick(tried)) is None:
            await self._changed.wait()
        self._servers[i].outstanding += 1
        self._servers[i].sent += 1
        tried.add(i)
        return i

    def _release(self, i: int) -> None:
        self._servers[i].outstanding -= 1
        self._notify()

    def _alive(self, i: int, sent_while_out: bool) -> None:
        """Server i answered (2xx or the request's own 4xx). An answer to an attempt sent while it
        was out (panic mode) brings it back; one sent before it was taken out does not."""
        server = self._servers[i]
        if server.healthy:
            server.failures = 0
        elif sent_while_out:
            self._bring_back(i)

    def _bring_back(self, i: int) -> None:
        server = self._servers[i]
        server.healthy, server.failures = True, 0
        if (probe := self._probes.pop(i, None)) is not None and probe is not asyncio.current_task():
            probe.cancel()
        log.warning("HTTP fleet: %s is back", server.url)
        self._notify()

    def _failed(self, i: int, message: str) -> _Transient:
        """Count a failure against server i (taking it out after `unhealthy_after` in a row);
        the error to retry with."""
        server = self._servers[i]
        server.failures += 1
        if server.healthy and server.failures >= self.options.unhealthy_after:
            server.healthy = False
            log.warning("HTTP fleet: taking %s out (%s)", server.url, message)
            self._probes[i] = self._loop.create_task(self._probe_until_up(i))
            self._notify()
        failover = not server.healthy and any(s.healthy for s in self._servers)
        return _Transient(message, failover=failover)

    async def _probe_until_up(self, i: int) -> None:
        url = self._servers[i].url + self.options.health_path
        interval, longest = self.options.probe_interval_s, self.options.max_probe_interval_s
        retrying = AsyncRetrying(  # until it answers (or the engine closes and cancels this)
            wait=wait_exponential(multiplier=interval, min=interval, max=longest),
            retry=retry_if_exception_type((_Transient, httpx.HTTPError, EngineUnavailable)))
        await asyncio.sleep(interval)
        async for attempt in retrying:
            with attempt:
                resp = await self._client.get(url, headers=self._headers(),
                                              timeout=self.options.connect_timeout_s)
                if resp.status_code != 200:
                    raise _Transient(f"{url}: HTTP {resp.status_code}")
        self._bring_back(i)

    # -- one HTTP call with retries ------------------------------------------------------------

    async def _attempt(self, path: str, body: dict, parse: Callable[[dict], Any],
                       tried: set[int]) -> Any:
        async with self._sem:
            i = await self._acquire(tried)
            url, sent_while_out = self._servers[i].url + path, not self._servers[i].healthy
            try:
                async with asyncio.timeout(self.timeout_s):
                    resp = await self._client.post(url, json=body, headers=self._headers())
            except TimeoutError:
                raise self._failed(i, f"{url}: no complete answer within {self.timeout_s}s") from None
            except httpx.TransportError as err:
                raise self._failed(i, f"{url}: {type(err).__name__}: {err}".rstrip(": ")) from None
            finally:
                self._release(i)
        status = resp.status_code
        if status == 429:  # up, but busy: try elsewhere, no sooner than it asks
            raise _Transient(f"{url}: HTTP {status}",
                             retry_after=_retry_after_seconds(resp.headers.get("retry-after")))
        if status >= 500:
            raise self._failed(i, f"{url}: HTTP {status}")
        if status >= 400:
            self._alive(i, sent_while_out)
            raise RequestRejected(f"{url}: HTTP {status}: {resp.text[:500]}")
        try:
            result = parse(resp.json())
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            raise self._failed(i, f"{url}: malformed response ({type(err).__name__}: {err})") from None
        self._servers[i].answered += 1
        self._alive(i, sent_while_out)
        return result

    async def _post(self, path: str, body: dict, parse: Callable[[dict], Any]) -> Any:
        start = time.monotonic()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts) | stop_after_delay(self.retry_budget_s),
            wait=self._wait, retry=retry_if_exception_type(_Transient), reraise=False,
            before_sleep=lambda s: log.warning("retrying %s (attempt %d): %s", path,
                                               s.attempt_number, s.outcome.exception()))
        tried: set[int] = set()
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(path, body, parse, tried)
        except RetryError as err:
            last = err.last_attempt.exception()
            raise EngineUnavailable(
                f"gave up on {path} after {err.last_attempt.attempt_number} attempts in "
                f"{time.monotonic() - start:.1f}s (servers {', '.join(self.base_urls)}); "
                f"last error: {last}") from None

    # -- generate ------------------------------------------------------------------------------

    def _chat_body(self, req: ChatRequest) -> dict:
        p = req.params
        body: dict[str, Any] = {
            "model": self.model, "messages": chat.message_dicts(req.messages, req.system),
            "n": p.n, "temperature": p.temperature, "top_p": p.top_p, "max_tokens": p.max_tokens,
        }
        if p.seed is not None:
            body["seed"] = p.seed
        if p.stop:
            body["stop"] = list(p.stop)
        if p.logprobs is not None:
            body.update(logprobs=True, top_logprobs=p.logprobs)
        elif p.n > 1:  # per-token entries give each sample's own token count
            body.update(logprobs=True, top_logprobs=0)
        return body

    def _completions(self, req: ChatRequest, data: dict, latency: float) -> list[Completion]:
        p = req.params
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        if len(choices) != p.n:
            raise ValueError(f"asked for {p.n} choices, got {len(choices)}")
        usage = data.get("usage") or {}
        out = []
        for c in choices:
            text = c["message"]["content"] or ""
            content = (c.get("logprobs") or {}).get("content")
            if content is not None:
                n_tokens = len(content)
            elif p.n == 1 and "completion_tokens" in usage:
                n_tokens = int(usage["completion_tokens"])
            elif self._tokenizer is not None:
                n_tokens = len(self._tokenizer.encode(text, add_special_tokens=False))
            else:
                raise ValueError("no per-sample token counts in the response")
            top = None
            if p.logprobs is not None:
                top = [{t["token"]: float(t["logprob"]) for t in entry["top_logprobs"]}
                       for entry in content]
            out.append(Completion(text=text, finish_reason=c.get("finish_reason") or "stop",
                                  prompt_tokens=int(usage.get("prompt_tokens", 0)),
                                  completion_tokens=n_tokens, top_logprobs=top, latency_s=latency))
        return out

    async def _generate_one(self, req: ChatRequest) -> list[Completion]:
        start = time.perf_counter()
        data = await self._post("/v1/chat/completions", self._chat_body(req), lambda d: d)
        return self._completions(req, data, time.perf_counter() - start)

    def generate_iter(self, requests: list[ChatRequest]
                      ) -> Iterator[tuple[int, list[Completion] | RequestRejected]]:
        """(request index, completions) in the order requests finish, so callers can store each
        result the moment it arrives. A request the server refuses yields its RequestRejected
        instead (the others go on); any other failure raises."""
        yield from self._each(lambda i: self._generate_one(requests[i]), len(requests),
                              yield_rejected=True)

    def generate(self, requests: list[ChatRequest]) -> list[list[Completion]]:
        out: list[list[Completion] | None] = [None] * len(requests)
        for i, completions in self.generate_iter(requests):
            if isinstance(completions, RequestRejected):
                raise completions
            out[i] = completions
        return out  # type: ignore[return-value]

    # -- score ---------------------------------------------------------------------------------

    async def _tokenize(self, body: dict) -> list[int]:
        return await self._post("/tokenize", {"model": self.model, **body},
                                lambda d: [int(t) for t in d["tokens"]])

    async def _scoring_ids(self, req: ScoreRequest) -> tuple[list[int], int]:
        if self._tokenizer is not None:
            return chat.scoring_ids(self._tokenizer, req.prompt, req.response, req.system)
        prompt = await self._tokenize({"messages": chat.message_dicts(req.prompt, req.system),
                                       "add_generation_prompt": True, "add_special_tokens": False})
        response = await self._tokenize({"prompt": req.response, "add_special_tokens": False})
        return prompt + response, len(prompt)

    async def _score_one(self, req: ScoreRequest) -> TokenScores:
        ids, n_prompt = await self._scoring_ids(req)
        if n_prompt < 1:
            raise RequestRejected("cannot score a response after an empty prompt")
        if len(ids) == n_prompt:
            return TokenScores([])
        body = {"model": self.model, "prompt": ids, "max_tokens": 1, "temperature": 0.0,
                "echo": True, "logprobs": 0, "prompt_logprobs": 0}

        def parse(data: dict) -> TokenScores:
            choice = data["choices"][0]
            per_token = choice.get("prompt_logprobs")
            if per_token is not None:  # vLLM: [None | {token_id: {"logprob": ...}}, ...]
                values = [per_token[i][str(ids[i])]["logprob"] for i in range(n_prompt, len(ids))]
            else:  # OpenAI-style echo: token_logprobs of the echoed prompt (+ the generated token)
                values = choice["logprobs"]["token_logprobs"][n_prompt:len(ids)]
            if len(values) != len(ids) - n_prompt or any(v is None for v in values):
                raise ValueError("log-probs do not cover the response tokens")
            return TokenScores([float(v) for v in values])

        return await self._post("/v1/completions", body, parse)

    def score(self, requests: list[ScoreRequest]) -> list[TokenScores]:
        out: list[TokenScores | None] = [None] * len(requests)
        for i, scores in self._each(lambda i: self._score_one(requests[i]), len(requests)):
            out[i] = scores
        return out  # type: ignore[return-value]

    # -- unsupported ---------------------------------------------------------------------------

    def hidden_states(self, requests: list[ScoreRequest]) -> list:
        raise UnsupportedCapability("the HTTP engine cannot return hidden states")

    def reward(self, requests: list[ScoreRequest]) -> list[float]:
        raise UnsupportedCapability("the HTTP engine does not serve reward models")

    async def _shutdown(self) -> None:
        for probe in self._probes.values():
            probe.cancel()
        await asyncio.gather(*self._probes.values(), return_exceptions=True)
        await self._client.aclose()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> "HttpEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
