"""The one retry layer for every litellm call (reflector and API policy) and its cost accounting.

A litellm ``Router`` retries rate limits, server errors and timeouts with backoff; bad requests,
authentication and context-window errors are not retried, because asking again cannot fix them.
The provider SDK's own retries stay off (``max_retries=0`` per call), so there is one layer only.
"""

from __future__ import annotations

import logging
import os

from espl_bench.records import Usage

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


def charge(usage: Usage, response) -> None:
    """Add ``response``'s tokens and dollars to ``usage`` (the record is :class:`espl_bench.records.Usage`)."""
    tokens = getattr(response, "usage", None)
    usage.add(int(getattr(tokens, "prompt_tokens", 0) or 0), int(getattr(tokens, "completion_tokens", 0) or 0),
              response_cost(response))


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
