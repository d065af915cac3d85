"""The one retry layer for every litellm call (reflector and API policy) and its cost accounting.

A litellm ``Router`` retries rate limits, server errors and timeouts with backoff; bad requests,
authentication and context-window errors are not retried, because asking again cannot fix them.
The provider SDK's own retries stay off (``max_retries=0`` per call), so there is one layer only.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-list fetch at import

log = logging.getLogger(__name__)


def retrying_router(model: str, *, num_retries: int, timeout: float, params: dict | None = None):
    """A Router serving ``model`` (with extra litellm ``params`` such as ``api_base``) as ``"main"``."""
    from litellm import Router
    from litellm.router import RetryPolicy

    policy = RetryPolicy(BadRequestErrorRetries=0, AuthenticationErrorRetries=0,
                         ContentPolicyViolationErrorRetries=0, ContextWindowExceededErrorRetries=0,
                         RateLimitErrorRetries=num_retries, InternalServerErrorRetries=num_retries,
                         TimeoutErrorRetries=num_retries)
    return Router(model_list=[{"model_name": "main", "litellm_params": {"model": model, **(params or {})}}],
                  retry_policy=policy, num_retries=num_retries, timeout=timeout)


@dataclass
class Usage:
    """Cumulative calls, tokens and dollars of one model; ``cost_usd`` is 0 where litellm has no price.

    Thread-safe: calls run from many threads at once, and each update takes the lock.
    """

    calls: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def called(self) -> None:
        with self._lock:
            self.calls += 1

    def failed(self) -> None:
        with self._lock:
            self.failures += 1

    def add(self, response) -> None:
        usage = getattr(response, "usage", None)
        cost = response_cost(response)
        with self._lock:
            self.prompt_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
            self.completion_tokens += int(getattr(usage, "completion_tokens", 0) or 0)
            self.cost_usd += cost

    def as_dict(self) -> dict:
        with self._lock:
            return {"calls": self.calls, "failures": self.failures, "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens, "cost_usd": round(self.cost_usd, 6)}


def response_cost(response) -> float:
    """The dollar cost litellm computed for ``response`` (from its local price map), else 0."""
    from espl_bench.adapters import litellm as litellm_internals

    cost = litellm_internals.hidden_params(response).get("response_cost")
    if cost is None:
        try:
            import litellm

            cost = litellm.completion_cost(completion_response=response)
        except Exception:  # local and self-hosted models have no price: they cost nothing here
            cost = 0.0
    return float(cost or 0.0)


def usage_delta(after: dict, before: dict) -> dict:
    """``after - before`` for two :meth:`Usage.as_dict` snapshots (one iteration's spend)."""
    return {k: round(after[k] - before.get(k, 0), 6) if isinstance(after[k], float) else after[k] - before.get(k, 0)
            for k in after}


def sum_usage(items: list[dict]) -> dict:
    """Sum of per-iteration usage dicts (a run's total, also across resumed sessions)."""
    total: dict = {}
    for item in items:
        for k, v in item.items():
            total[k] = total.get(k, 0) + v
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in total.items()}
