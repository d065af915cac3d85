"""litellm's response cost and its process-wide custom provider list (:mod:`espl_bench.agents`).

Checked against litellm 1.110.2 (installed here); ``pyproject.toml`` allows ``litellm>=1.80`` and no
CI step installs that floor, so an older release is unchecked.

* ``response._hidden_params["response_cost"]``: the cost litellm computed for a call (its docs
  read it so); newer releases also expose it as the public ``hidden_params``, preferred here.
* ``litellm.custom_provider_map``: litellm routes a call to a ``CustomLLM`` handler only through
  this module-level list (``completion`` takes a provider *name*, never a handler), so serving an
  in-process model means adding an entry to process-wide state. :func:`add_provider` and
  :func:`remove_provider` are the only code that changes it; the in-process models remove their
  entry when closed (:class:`espl_bench.agents.reflector.LocalModels`).
"""

from __future__ import annotations

import threading

LIBRARY = "litellm"
CHECKED = "==1.110.2"
HIDDEN = "_hidden_params"
_LOCK = threading.Lock()  # two runs in one process must not lose each other's entries


def hidden_params(response) -> dict:
    """What litellm attached to ``response`` beyond the OpenAI fields (its cost among them); {} when none."""
    found = getattr(response, "hidden_params", None)
    if found is None:
        found = getattr(response, HIDDEN, None)
    return dict(found or {})


def add_provider(provider: str, handler) -> None:
    """Route litellm calls for ``provider/<model>`` to ``handler`` (a ``litellm.CustomLLM``)."""
    import litellm

    with _LOCK:
        litellm.custom_provider_map = [*litellm.custom_provider_map, {"provider": provider, "custom_handler": handler}]


def remove_provider(handler) -> None:
    """Take ``handler``'s entries out of litellm's provider list (nothing else's)."""
    import litellm

    with _LOCK:
        litellm.custom_provider_map = [p for p in litellm.custom_provider_map if p.get("custom_handler") is not handler]


def missing() -> list[str]:
    """The parts this module relies on that the installed litellm no longer has."""
    import litellm

    response = litellm.ModelResponse
    gone = []
    if HIDDEN not in getattr(response, "__private_attributes__", {}) and not hasattr(response, "hidden_params"):
        gone.append(f"litellm.ModelResponse.{HIDDEN} (or hidden_params)")
    if not isinstance(getattr(litellm, "custom_provider_map", None), list):
        gone.append("litellm.custom_provider_map (a list)")
    if not hasattr(litellm, "CustomLLM"):
        gone.append("litellm.CustomLLM")
    return gone
