"""Rollout statistics the loops share (E-SPL's :mod:`espl_bench.method.loop` and the GEPA baseline)."""

from __future__ import annotations

from espl_bench.agents.rollout import Rollout


def rate(rollouts: list[Rollout], attribute: str) -> float:
    """The share of ``rollouts`` whose ``attribute`` (``success``, ``valid``) is true; 0 for none."""
    return sum(bool(getattr(r, attribute)) for r in rollouts) / len(rollouts) if rollouts else 0.0


def invalid_rate(rollouts: list[Rollout]) -> float:
    """Invalid actions per action taken, reported apart from success (an invalid action scores 0)."""
    turns = sum(r.turns for r in rollouts)
    return sum(r.invalid_actions for r in rollouts) / turns if turns else 0.0
