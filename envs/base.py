"""The one text-environment contract every espl-bench task follows.

What a plain env needs (:mod:`espl_bench.envs.contract` checks it before any model loads):
``gymnasium.spaces.Text`` observation and action spaces, and a ``reset`` that returns the
problem as a string; registered with ``gym.register`` (its ``max_episode_steps`` is the turn
limit). Such an env gets its splits from disjoint reset-seed ranges
(:class:`espl_bench.envs.splits.SplitPlan`). Everything below is optional and lets an env say
more; :class:`TextEnv` only adds conveniences.

Error policy: an env may raise from ``reset`` or ``step``; the rollout engine records that
episode as failed (reward 0, ``error`` set) and the run goes on, and a call that hangs past the
engine's deadline is abandoned the same way. The fuller contract:

* ``reset(*, seed=None, options=None) -> (observation, info)``. ``options`` may hold
  ``{"split": "train" | "validation" | "test", "index": int}`` to pick one problem of a split;
  otherwise a problem of the train split is drawn with the env's seeded generator. ``info`` may
  carry ``content_key``, a string naming the problem's content (question, secret, board): two
  problems with equal keys are the same problem. ``espl-bench envs check`` compares keys across
  splits (the observation text stands in for a missing key).
* ``split_size(split)``: problems per split. ``validation`` is optional (size 0 or a
  ``KeyError``): a run then holds the first train problems out as its validation split
  (:class:`envs.splits.SplitPlan`). The splits must be disjoint by content
  (:func:`envs.splits.content_split` is the built-ins' rule).
* observation: ``str``, the next user-turn text (the agent keeps the chat history).
* action: ``str``, the model's whole reply for the turn.
* ``step(action) -> (observation, reward, terminated, truncated, info)`` with ``reward`` in
  [0, 1]; ``terminated`` when the episode is over, ``truncated`` when the turn limit cut it.
* ``info`` always carries ``answer`` (the reference answer), ``success`` (bool), ``valid``
  (whether the action followed the answer format) and ``metadata`` (task-specific, JSON-safe).
  An invalid action earns no partial reward.
* A problem is a pure function of (split, index, env seed): two copies built with the same
  arguments give identical episodes.
"""

from __future__ import annotations

import string
from typing import Any

import gymnasium as gym
from gymnasium import spaces

from espl_bench.envs.splits import SPLITS  # re-exported: the contract's split names

MAX_TEXT = 1 << 20


class AnyText(spaces.Text):
    """A Text space that holds any string up to ``max_length`` characters.

    Gymnasium's ``Text`` checks every character against a finite charset, but task text and
    model output are arbitrary unicode (emoji, CJK, control characters), so membership here only
    checks type and length; ``sample()`` still draws from printable ASCII.
    """

    def contains(self, x) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length


def text_space() -> spaces.Text:
    return AnyText(max_length=MAX_TEXT, min_length=0, charset=string.printable)


class TextEnv(gym.Env[str, str]):
    """Base class for text tasks; see the module docstring for the contract."""

    metadata: dict[str, Any] = {"render_modes": [], "kind": "reasoning"}

    def __init__(self, max_turns: int = 1):
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {max_turns}")
        self.max_turns = max_turns
        self.observation_space = text_space()
        self.action_space = text_space()

    def split_size(self, split: str) -> int:
        """How many problems ``split`` holds."""
        raise NotImplementedError

    def _pick(self, options: dict | None) -> tuple[str, int]:
        options = options or {}
        split = options.get("split", "train")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        size = self.split_size(split)
        index = options.get("index")
        if index is None:
            index = int(self.np_random.integers(size))
        if not 0 <= index < size:
            raise ValueError(f"index {index} is outside the {split} split (size {size})")
        return split, int(index)
