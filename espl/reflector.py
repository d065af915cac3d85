"""The ``Reflector`` seam: the LLM that critiques and rewrites programs, reached through litellm.

Contract:
    ``complete(messages, purpose=...)`` returns the model's text reply. It raises
    :class:`ReflectorCallError` when one call fails (timeout, rate limit after retries, provider
    error); callers treat that as a failed reflection, not a crashed run.

Any litellm model string works (``openai/gpt-4o-mini``, ``hosted_vllm/...``, ``ollama/...``);
keys come from the environment as litellm reads them and are never passed, logged or stored.
The default, ``espl-local/reference``, is the frozen reference policy (base weights, no LoRA)
served in-process through a litellm custom provider, so a default run needs no key and no network.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from concurrent.futures import Future
from typing import Protocol

from espl.errors import ReflectorUnavailable

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-list fetch at import

log = logging.getLogger(__name__)

LOCAL_PROVIDER = "espl-local"
DEFAULT_REFLECTOR = f"{LOCAL_PROVIDER}/reference"


class ReflectorCallError(RuntimeError):
    """One reflector call failed; the message is safe to log (no keys, no payloads)."""


class Reflector(Protocol):
    def complete(self, messages: list[dict], *, purpose: str = "") -> str: ...


class LiteLLMReflector:
    """A reflector that calls the model through a litellm ``Router``; see the module docstring.

    The Router is the only retry loop (the provider SDK's own retries are off): rate limits,
    server errors and timeouts are retried with backoff; bad requests, authentication and
    context-window errors are not, because asking again cannot fix them.
    """

    def __init__(self, model: str, *, max_tokens: int = 384, temperature: float = 0.7, timeout: float = 120.0,
                 num_retries: int = 2):
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.timeout = timeout
        self.num_retries = num_retries
        self.calls = 0
        self.failures = 0
        self.tokens = 0
        self._routers: dict[int, object] = {}

    def _router(self, num_retries: int):
        if num_retries not in self._routers:
            from litellm import Router
            from litellm.router import RetryPolicy

            policy = RetryPolicy(BadRequestErrorRetries=0, AuthenticationErrorRetries=0,
                                 ContentPolicyViolationErrorRetries=0, ContextWindowExceededErrorRetries=0,
                                 RateLimitErrorRetries=num_retries, InternalServerErrorRetries=num_retries,
                                 TimeoutErrorRetries=num_retries)
            self._routers[num_retries] = Router(
                model_list=[{"model_name": "reflector", "litellm_params": {"model": self.model}}],
                retry_policy=policy, num_retries=num_retries, timeout=self.timeout)
        return self._routers[num_retries]

    def complete(self, messages: list[dict], *, purpose: str = "", num_retries: int | None = None) -> str:
        self.calls += 1
        try:
            response = self._router(self.num_retries if num_retries is None else num_retries).completion(
                model="reflector",
                messages=messages,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                timeout=self.timeout,
                max_retries=0,
            )
        except Exception as exc:
            self.failures += 1
            raise ReflectorCallError(f"{purpose or 'reflection'} call to {self.model} failed: {type(exc).__name__}") from None
        usage = getattr(response, "usage", None)
        self.tokens += int(getattr(usage, "total_tokens", 0) or 0)
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


class _Batcher:
    """Collects concurrent local requests and answers them with batched generation.

    Reflection issues many independent calls at once (one summary per rollout); batching them
    into one ``generate`` is several times faster on CPU than answering them one by one.
    """

    def __init__(self, sampler, *, wait_s: float = 0.05, max_batch: int = 32):
        self.sampler = sampler
        self.wait_s = wait_s
        self.max_batch = max_batch
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="espl-local-reflector", daemon=True)
        self._thread.start()

    def submit(self, messages: list[dict], params) -> Future:
        future: Future = Future()
        self._queue.put((messages, params, future))
        return future

    def _serve(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get(timeout=self.wait_s))
                except queue.Empty:
                    break
            by_params: dict = {}
            for item in batch:
                by_params.setdefault(item[1], []).append(item)
            for params, items in by_params.items():
                try:
                    outputs = self.sampler.generate([m for m, _, _ in items], params)
                except Exception as exc:  # delivered to every waiting caller
                    for _, _, future in items:
                        future.set_exception(exc)
                    continue
                for (_, _, future), completion in zip(items, outputs):
                    future.set_result(completion)


_LOCAL_MODELS: dict[str, _Batcher] = {}
_registered = False
_lock = threading.Lock()


def register_local_model(name: str, sampler) -> str:
    """Serve ``sampler`` as the litellm model ``espl-local/<name>``; returns that model string."""
    global _registered
    import litellm
    from litellm import CustomLLM

    from agents.sampler import SamplingParams

    class _LocalProvider(CustomLLM):
        def completion(self, *args, **kwargs):
            model = kwargs.get("model", "").split("/", 1)[-1]
            batcher = _LOCAL_MODELS.get(model)
            if batcher is None:
                raise ValueError(f"no local model named {model!r} is registered")
            optional = kwargs.get("optional_params") or {}
            params = SamplingParams(max_new_tokens=int(optional.get("max_tokens") or 256),
                                    temperature=float(optional.get("temperature", 0.7)), top_p=0.95, seed=0)
            completion = batcher.submit(kwargs["messages"], params).result()
            return litellm.ModelResponse(
                model=f"{LOCAL_PROVIDER}/{model}",
                choices=[{"index": 0, "finish_reason": completion.finish_reason,
                          "message": {"role": "assistant", "content": completion.text}}],
                usage={"prompt_tokens": len(completion.prompt_ids), "completion_tokens": len(completion.completion_ids),
                       "total_tokens": len(completion.prompt_ids) + len(completion.completion_ids)},
            )

    with _lock:
        _LOCAL_MODELS[name] = _Batcher(sampler)
        if not _registered:
            litellm.custom_provider_map = [
                *[p for p in litellm.custom_provider_map if p.get("provider") != LOCAL_PROVIDER],
                {"provider": LOCAL_PROVIDER, "custom_handler": _LocalProvider()},
            ]
            _registered = True
    return f"{LOCAL_PROVIDER}/{name}"
