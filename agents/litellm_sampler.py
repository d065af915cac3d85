"""The ``Sampler`` seam backed by any litellm model: hosted API policies (``--sampler litellm``).

Contract (that of :mod:`agents.sampler`, except):
    An API returns text, not token ids, so completions carry no ids and no logprobs: the policy
    cannot be trained (the config refuses ``rl``/``espl`` with this sampler), and a multi-turn
    episode is continued from its messages, not its token record. Token counts come from the
    provider's ``usage`` (``metadata["completion_tokens"]``), and every call's tokens and dollar
    cost accumulate in ``usage`` for the run summary. All requests of one ``generate`` call are in
    flight at once, bounded by ``max_concurrency``.

Error policy:
    Retries (rate limits, server errors, timeouts) happen in :func:`~agents.llm_router.retrying_router`.
    A request that still fails because of its own content (context window, content policy, a bad
    request) is one degenerate completion with the error in ``metadata["error"]``: a bad rollout is
    data. Anything else after retries (authentication, an unknown model, an unreachable provider)
    affects every request, so it raises :class:`PolicyUnavailable` naming the model and the fix.
    Error messages carry the exception type only, so a key echoed by a provider never reaches logs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence

from espl_bench.agents.llm_router import charge, retrying_router
from espl_bench.agents.sampler import Completion, Message, SamplingParams
from espl_bench.errors import EsplError
from espl_bench.records import Usage

log = logging.getLogger(__name__)

# litellm exception class names that belong to one request, not to the model or the account.
_PER_REQUEST_ERRORS = ("ContextWindowExceededError", "ContentPolicyViolationError", "BadRequestError")


class PolicyUnavailable(EsplError):
    """The API policy cannot be reached or used (key, model name, provider down)."""


class LiteLLMSampler:
    """Samples from ``model`` through litellm; see the module docstring for the contract."""

    def __init__(self, model: str, *, params: dict | None = None, max_concurrency: int = 16, timeout: float = 300.0,
                 num_retries: int = 2):
        self.model = model
        self.params = dict(params or {})
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.usage = Usage()
        self._router = retrying_router(model, num_retries=num_retries, timeout=timeout, params=self.params)
        # One long-lived loop: litellm caches async HTTP clients, which must not outlive their loop.
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="litellm-policy", daemon=True).start()

    def encode(self, conversation: list[Message]) -> list[int]:
        return []

    def continuation(self, history: list[Message], new: list[Message], ended_with_eos: bool) -> list[int]:
        return []

    def generate(self, conversations: Sequence[list[Message]], params: SamplingParams,
                 prompt_ids: Sequence[list[int] | None] | None = None,
                 seeds: Sequence[int] | None = None) -> list[Completion]:
        # ``seeds`` are not sent: hosted APIs do not promise reproducible samples.
        if not conversations:
            return []
        return asyncio.run_coroutine_threadsafe(self._all(list(conversations), params), self._loop).result()

    async def _all(self, conversations: list[list[Message]], params: SamplingParams) -> list[Completion]:
        semaphore = asyncio.Semaphore(self.max_concurrency)
        return list(await asyncio.gather(*(self._one(semaphore, c, params) for c in conversations)))

    async def _one(self, semaphore: asyncio.Semaphore, messages: list[Message], params: SamplingParams) -> Completion:
        async with semaphore:
            self.usage.called()
            try:
                response = await self._router.acompletion(
                    model="main", messages=messages, max_tokens=params.max_new_tokens,
                    temperature=params.temperature, top_p=params.top_p, timeout=self.timeout, max_retries=0)
            except Exception as exc:
                self.usage.failed()
                kind = type(exc).__name__
                if kind in _PER_REQUEST_ERRORS:
                    log.warning("policy %s rejected one request (%s); recorded as an empty reply", self.model, kind)
                    return Completion(text="", prompt_ids=[], completion_ids=[], logprobs=[], finish_reason="length",
                                      metadata={"error": kind, "completion_tokens": 0})
                raise PolicyUnavailable(f"policy {self.model!r} failed ({kind}); fix: set its API key in the environment, "
                                        "check the model name and --policy-kwargs, then resume the run") from None
        charge(self.usage, response)
        choice = response.choices[0]
        content = choice.message.content if isinstance(choice.message.content, str) else ""
        tokens = int(getattr(getattr(response, "usage", None), "completion_tokens", 0) or 0)
        finish = "length" if choice.finish_reason == "length" else "stop"
        return Completion(text=content, prompt_ids=[], completion_ids=[], logprobs=[], finish_reason=finish,
                          metadata={"completion_tokens": tokens})
