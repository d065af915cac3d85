"""The tasks: text environments behind one Gymnasium contract (see :mod:`envs.base`).

Importing this package registers the built-in ids (``espl/...``) and one id per reasoning-gym
dataset (``rg/<dataset>-v0``) with Gymnasium.
"""

from __future__ import annotations

from espl_bench.envs.base import TextEnv
from espl_bench.envs.registry import (
    BUILTIN,
    describe,
    list_env_ids,
    list_envs,
    register_builtins,
)

__all__ = ["TextEnv", "BUILTIN", "describe", "list_env_ids", "list_envs"]

register_builtins()
