"""Built-in environment ids, their descriptions, and lookup with clear errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym

from espl.errors import EnvNotFound


@dataclass(frozen=True)
class BuiltinEnv:
    id: str
    entry_point: str
    description: str
    kind: str = "reasoning"
    kwargs: dict = field(default_factory=dict)


BUILTIN = (
    BuiltinEnv(
        id="espl/Arithmetic-v0",
        entry_point="envs.reasoning_gym_env:ReasoningGymEnv",
        description="reasoning-gym basic_arithmetic: integer expressions, exact answer",
        kwargs={"task": "basic_arithmetic", "min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2},
    ),
)


def list_env_ids() -> list[str]:
    """Every text environment id known to Gymnasium's registry that espl-bench ships."""
    import envs  # noqa: F401  (registers the built-ins)

    return sorted(spec.id for spec in BUILTIN)


def describe(env_id: str) -> str:
    for spec in BUILTIN:
        if spec.id == env_id:
            return spec.description
    return ""


def make_env(env_id: str, **kwargs) -> gym.Env:
    """``gymnasium.make`` with one clear error for an unknown id (``pkg:Id`` imports ``pkg``)."""
    import envs  # noqa: F401

    try:
        return gym.make(env_id, disable_env_checker=True, **kwargs).unwrapped
    except (gym.error.NameNotFound, gym.error.NamespaceNotFound, gym.error.VersionNotFound, gym.error.UnregisteredEnv) as exc:
        known = ", ".join(list_env_ids())
        raise EnvNotFound(f"unknown environment {env_id!r} ({exc}); fix: use one of {known} or 'pkg:Name-v0' for a plugin") from None
    except ModuleNotFoundError as exc:
        raise EnvNotFound(f"cannot import the plugin for {env_id!r} ({exc}); fix: pip install the package that provides it") from None
