"""What an env must offer to run in espl-bench, checked before any model loads.

Any registered Gymnasium env fits when its observations and actions are text
(``gymnasium.spaces.Text``) and its reset returns a string: espl-bench reads nothing else from it
(``info`` keys are optional; see :mod:`espl_bench.envs.base`). A mismatch is one
:class:`~espl_bench.errors.EnvUnfit` line naming what is missing and the fix, never a traceback
from inside a run.
"""

from __future__ import annotations

from gymnasium import spaces

from espl_bench.errors import EnvUnfit


def require_text(env_id: str, env, plan) -> None:
    """Raise :class:`EnvUnfit` unless ``env`` has text spaces and resets to a text problem."""
    for name in ("observation_space", "action_space"):
        space = getattr(env, name, None)
        if not isinstance(space, spaces.Text):
            raise EnvUnfit(f"environment {env_id!r} has {name} {space!r}, but espl-bench talks to envs in text; "
                           "fix: make both spaces gymnasium.spaces.Text (observations are the user turns, actions "
                           "the model's replies)")
    split = plan.train
    seed, options = plan.reset_args(split.split, split.start, 0)
    try:
        observation, _ = env.reset(seed=seed, options=options)
    except Exception as exc:
        raise EnvUnfit(f"environment {env_id!r} failed to reset to its first train problem "
                       f"({type(exc).__name__}: {str(exc)[:200]}); fix: make reset(seed=..., options=...) work"
                       + ("" if plan.seeded else " for options {'split': ..., 'index': ...}")) from None
    if not isinstance(observation, str):
        raise EnvUnfit(f"environment {env_id!r} reset to a {type(observation).__name__}, not a string; fix: return the "
                       "problem's text as the observation")
