"""The ``Reflector`` seam: the LLM that critiques and rewrites programs, reached through litellm.

Contract:
    ``complete(messages, purpose=...)`` returns the model's text reply. It raises
    :class:`ReflectorCallError` when one call fails (timeout, rate limit after retries, provider
    error); callers treat that as a failed reflection, not a crashed run.

Any litellm model string works (``openai/gpt-4o-mini``, ``hosted_vllm/...``, ``ollama/...``);
keys come from the environment as litellm reads them and are never passed, logged or stored.
The default, ``espl-local/reference``, is the frozen reference policy (base weights, no LoRA)
served in-process through a litellm custom provider (:class:`LocalModels`, one per run), so a
default run needs no key and no network.

Thread safety: ``complete`` is called from many threads at once (an iteration's summaries and
critiques run concurrently); every implementation must allow that. :class:`LiteLLMReflector`
does (litellm's Router is thread-safe; its usage counters take a lock).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import replace
from typing import Protocol

from espl_bench.adapters import litellm as litellm_internals
from espl_bench.agents.llm_router import charge, retrying_router
from espl_bench.agents.sampler import derive_seed
from espl_bench.errors import ReflectorUnavailable
from espl_bench.records import Usage

log = logging.getLogger(__name__)

LOCAL_PROVIDER = "espl-local"
DEFAULT_REFLECTOR = f"{LOCAL_PROVIDER}/reference"


# Errors a provider answers a request with when it takes no response_format.
_SCHEMA_REFUSALS = frozenset({"BadRequestError", "JSONSchemaValidationError"})


def _structured(model: str) -> bool:
    if model.startswith(LOCAL_PROVIDER) or model.startswith("hosted_vllm/"):
        return True
    import litellm

    try:
        return bool(litellm.supports_response_schema(model=model))
    except Exception:  # a model litellm's map does not know
        return False


class ReflectorCallError(RuntimeError):
    """One reflector call failed; the message is safe to log (no keys, no payloads)."""


class Reflector(Protocol):
    """The LLM behind mutation, crossover and GEPA's proposals; see the module docstring."""

    @property
    def honours_schema(self) -> bool:
        """Whether a schema passed to :meth:`complete` binds the answer."""
        ...

    def complete(self, messages: list[dict], *, purpose: str = "", max_tokens: int | None = None,
                 schema: dict | None = None, stop: list[str] | None = None) -> str:
        """The reply to ``messages`` (``purpose`` names the call in errors and logs), at most
        ``max_tokens`` tokens and ending at the first ``stop`` string; with ``schema`` (a JSON
        schema) and ``honours_schema``, the reply is JSON of that schema. Raises
        :class:`ReflectorCallError` for a failed call, never for a bad answer (that is data)."""
        ...


class LiteLLMReflector:
    """A reflector that calls the model through :func:`agents.llm_router.retrying_router`
    (retries on rate limits, server errors and timeouts only); see the module docstring."""

    def __init__(self, model: str, *, max_tokens: int = 384, temperature: float = 0.7, timeout: float = 120.0,
                 num_retries: int = 2, params: dict | None = None):
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.timeout = timeout
        self.num_retries = num_retries
        self.params = dict(params or {})  # extra litellm arguments (api_base of a local server)
        self.usage = Usage()
        self._routers: dict[int, object] = {}
        self._honours_schema: bool | None = None

    @property
    def calls(self) -> int:
        return self.usage.calls

    @property
    def failures(self) -> int:
        return self.usage.failures

    @property
    def tokens(self) -> int:
        return self.usage.prompt_tokens + self.usage.completion_tokens

    def _router(self, num_retries: int):
        if num_retries not in self._routers:
            self._routers[num_retries] = retrying_router(self.model, num_retries=num_retries, timeout=self.timeout,
                                                         params=self.params)
        return self._routers[num_retries]

    @property
    def honours_schema(self) -> bool:
        """Whether a ``schema`` given to :meth:`complete` binds the answer: in-process models
        (llguidance), vLLM servers, and what litellm's model map says supports ``response_format``;
        ``False`` after a provider refused one (later calls ask without it)."""
        if self._honours_schema is None:
            self._honours_schema = _structured(self.model)
        return self._honours_schema

    def complete(self, messages: list[dict], *, purpose: str = "", num_retries: int | None = None,
                 max_tokens: int | None = None, schema: dict | None = None, stop: list[str] | None = None) -> str:
        """The reply (see the seam's contract); ``max_tokens`` caps this call below the reflector's
        own cap, ``schema`` asks for structured output when the provider honours it, ``stop`` ends a
        free-text reply at the first of its strings."""
        self.usage.called()
        request = {"model": "main", "messages": messages, "temperature": self.temperature, "timeout": self.timeout,
                   "max_retries": 0, "max_tokens": min(self.max_tokens, max_tokens or self.max_tokens)}
        if stop:
            request["stop"] = list(stop)
        if schema is not None and self.honours_schema:
            request["response_format"] = {"type": "json_schema",
                                          "json_schema": {"name": "edit_operations", "schema": schema, "strict": True}}
        router = self._router(self.num_retries if num_retries is None else num_retries)
        try:
            response = router.completion(**request)
        except Exception as exc:
            refused = type(exc).__name__ == "UnsupportedParamsError" or (
                type(exc).__name__ in _SCHEMA_REFUSALS and any(w in str(exc).lower() for w in ("response_format", "schema")))
            if "response_format" in request and refused:
                self._honours_schema = False  # the provider takes no schema: parse-and-repair from here on
                log.warning("%s refused structured output (%s); asking without it", self.model, type(exc).__name__)
                self.usage.failed()
                return self.complete(messages, purpose=purpose, num_retries=num_retries, max_tokens=max_tokens, stop=stop)
            self.usage.failed()
            raise ReflectorCallError(f"{purpose or 'reflection'} call to {self.model} failed: {type(exc).__name__}") from None
        charge(self.usage, response)
        content = response.choices[0].message.content
        return content if isinstance(content, str) else ""

    def check(self) -> None:
        """One tiny call, so an unreachable reflector fails at start, not mid-run."""
        try:
            self.complete([{"role": "user", "content": "Reply with OK."}], purpose="reachability check", num_retries=0)
        except ReflectorCallError as exc:
            raise ReflectorUnavailable(
                f"reflector {self.model!r} is unreachable ({exc.__cause__ or exc}); fix: set its API key in the "
                f"environment, start its server, or drop --reflector to use the local reference model"
            ) from None


# The in-process reflector is a small model that loops ("1.1.1.1...", one sentence over and over)
# until its budget runs out, mid-string under a schema. A mild repetition penalty on the reply's
# own tokens (transformers' CTRL-style one) stops most loops; the reflector's decoding only.
LOCAL_REPETITION_PENALTY = 1.2


class _Batcher:
    """Collects concurrent local requests and answers them with batched generation.

    Reflection issues many independent calls at once (one summary per rollout); batching them
    into one ``generate`` is several times faster on CPU than answering them one by one.
    """

    def __init__(self, sampler, *, wait_s: float = 0.05, max_batch: int = 32, cores=None):
        self.sampler = sampler
        self.cores = cores  # a CoreShare: generation runs on the reflector's share of the cores
        self.wait_s = wait_s
        self.max_batch = max_batch
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="espl-local-reflector", daemon=True)
        self._thread.start()

    def submit(self, messages: list[dict], params, schema: dict | None = None) -> Future:
        future: Future = Future()
        self._queue.put((messages, params, future, schema))
        return future

    def stop(self, timeout: float = 120.0) -> None:
        """End the serving thread, which releases the sampler (and its model) for collection.

        Waits for it: a daemon thread still inside torch when the interpreter exits aborts the
        process ("terminate called without an active exception"), seen on a loaded machine.
        """
        self._queue.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the local reflector thread is still generating after %.0f s", timeout)

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get(timeout=self.wait_s)
                except queue.Empty:
                    break
                if item is None:  # stop after answering what was already asked
                    self._queue.put(None)
                    break
                batch.append(item)
            # Requests that differ only in their token budget share one generate when the sampler
            # caps rows apart (a critique and a crossover asked at once decode together).
            budgets = getattr(self.sampler, "row_budgets", False)
            by_params: dict = {}
            for item in batch:
                key = replace(item[1], max_new_tokens=0) if budgets else item[1]
                by_params.setdefault(key, []).append(item)
            for key, items in by_params.items():
                schemas = [schema for _, _, _, schema in items]
                # Each request is seeded by its own text: its answer does not depend on which other
                # requests shared its batch (the batch is whatever arrived within wait_s).
                seeds = [derive_seed("reflect", json.dumps(m, sort_keys=True), json.dumps(schema, sort_keys=True))
                         for m, _, _, schema in items]
                extra = {"schemas": schemas} if any(schemas) else {}
                params = key
                if budgets:
                    extra["budgets"] = [p.max_new_tokens for _, p, _, _ in items]
                    params = replace(key, max_new_tokens=max(extra["budgets"]))
                try:
                    with self.cores.busy("reflector") if self.cores is not None else nullcontext():
                        outputs = self.sampler.generate([m for m, _, _, _ in items], params, seeds=seeds, **extra)
                except Exception as exc:  # delivered to every waiting caller
                    for _, _, future, _ in items:
                        future.set_exception(exc)
                    continue
                for (_, _, future, _), completion in zip(items, outputs):
                    future.set_result(completion)


class LocalModels:
    """In-process models served to litellm for one run: a custom provider of their own.

    ``serve(name, sampler)`` returns the litellm model string (``espl-local-<id>/<name>``) that
    reaches ``sampler`` through litellm like any hosted model, with concurrent calls batched into
    one ``generate``. The provider is this object's: two runs in one process (tests, a notebook)
    never share models, and :meth:`close` stops the serving threads and removes the provider
    from ``litellm.custom_provider_map`` (litellm keeps that list process-wide; nothing of ours
    stays in it after a run). Thread safety: ``serve`` and ``close`` may be called from any thread.
    """

    def __init__(self):
        import uuid

        self.provider = f"{LOCAL_PROVIDER}-{uuid.uuid4().hex[:10]}"
        self._batchers: dict[str, _Batcher] = {}
        self._lock = threading.Lock()
        self._handler = None

    def serve(self, name: str, sampler, cores=None) -> str:
        """Serve ``sampler`` as ``name`` (on ``cores``' reflector share when given: a CoreShare)."""
        with self._lock:
            old = self._batchers.pop(name, None)
            if old is not None:
                old.stop()
            self._batchers[name] = _Batcher(sampler, cores=cores)
            if self._handler is None:
                self._handler = _provider(self)
                litellm_internals.add_provider(self.provider, self._handler)
        return f"{self.provider}/{name}"

    def batcher(self, name: str) -> _Batcher:
        with self._lock:
            batcher = self._batchers.get(name)
        if batcher is None:
            raise ValueError(f"no local model named {name!r} is served")
        return batcher

    def close(self) -> None:
        with self._lock:
            batchers, self._batchers = list(self._batchers.values()), {}
            handler, self._handler = self._handler, None
        for batcher in batchers:
            batcher.stop()
        if handler is not None:
            litellm_internals.remove_provider(handler)


def _schema(optional: dict) -> dict | None:
    """The JSON schema of an OpenAI-style ``response_format`` ({"type": "json_schema", ...})."""
    response_format = optional.get("response_format") or {}
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    return (response_format.get("json_schema") or {}).get("schema")


def _provider(models: LocalModels):
    """A litellm ``CustomLLM`` answering from ``models``."""
    import litellm
    from litellm import CustomLLM

    from espl_bench.agents.sampler import SamplingParams

    class _LocalProvider(CustomLLM):
        def completion(self, *args, **kwargs):
            name = kwargs.get("model", "").split("/", 1)[-1]
            optional = kwargs.get("optional_params") or {}
            stop = optional.get("stop") or ()
            params = SamplingParams(max_new_tokens=int(optional.get("max_tokens") or 256),
                                    temperature=float(optional.get("temperature", 0.7)), top_p=0.95, seed=0,
                                    stop=(stop,) if isinstance(stop, str) else tuple(stop),
                                    repetition_penalty=LOCAL_REPETITION_PENALTY)
            completion = models.batcher(name).submit(kwargs["messages"], params, _schema(optional)).result()
            return litellm.ModelResponse(
                model=f"{models.provider}/{name}",
                choices=[{"index": 0, "finish_reason": completion.finish_reason,
                          "message": {"role": "assistant", "content": completion.text}}],
                usage={"prompt_tokens": len(completion.prompt_ids), "completion_tokens": len(completion.completion_ids),
                       "total_tokens": len(completion.prompt_ids) + len(completion.completion_ids)},
            )

    return _LocalProvider()
