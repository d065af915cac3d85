"""The tasks: text environments behind one Gymnasium contract (see :mod:`envs.base`).

Importing this package registers the built-in ids under the ``espl/`` namespace.
"""

from __future__ import annotations

import gymnasium as gym

from envs.base import TextEnv
from envs.registry import BUILTIN, describe, list_env_ids

__all__ = ["TextEnv", "BUILTIN", "describe", "list_env_ids"]

for _spec in BUILTIN:
    if _spec.id not in gym.registry:
        gym.register(id=_spec.id, entry_point=_spec.entry_point, kwargs=dict(_spec.kwargs), disable_env_checker=True)
