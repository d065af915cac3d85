"""The loop seam: what the runner drives, one iteration at a time, and all it may touch.

Two loops implement it: :class:`espl_bench.method.loop.EsplLoop` (E-SPL and every method of the
method table that iterates) and :class:`espl_bench.baselines.gepa.GepaLoop` (one GEPA search as
a single step). The runner (:mod:`espl_bench.running.runner`) builds one per run from the
method table's ``loop`` and uses nothing but this protocol.

Contract. ``schedule(done)`` lists the iterations still to run after ``done`` committed ones.
``iteration(t)`` runs iteration ``t`` to its end and returns what the runner commits; it calls
``progress(name)`` as it enters each phase. After it returns, ``pool``, ``rng`` and
``pending_record()`` are the state to commit with it, and a loop rebuilt from that state (the
same pool, rng, and ``restore_pending`` of the record) continues exactly as this one would.
``test_program()`` is the program the run is scored with (its test-time rule), and ``evaluator``
scores programs on the run's test items.

Errors. What a seam absorbs is data, not an exception: an env that raises is a failed episode, a
reflector that fails is a failed outcome, both counted in the iteration's metrics. Anything else
(a learner or sampler that cannot go on) raises out of ``iteration``; the runner commits nothing
for that iteration, so a resumed run starts it again.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from espl_bench.agents.rollout import Rollout
from espl_bench.method.program import Pool, Program
from espl_bench.method.reflection import ReflectionOutcome
from espl_bench.records import IterationMetrics, PendingBatch
from espl_bench.scoring.evaluator import Evaluator


@dataclass
class IterationResult:
    """One finished iteration: its rollouts, its reflection outcomes and its metrics."""

    rollouts: list[Rollout]
    outcomes: list[ReflectionOutcome]
    metrics: IterationMetrics


class Loop(Protocol):
    """A run's iterations (module docstring: contract and error policy)."""

    pool: Pool
    rng: random.Random
    evaluator: Evaluator

    def schedule(self, done: int) -> range: ...

    def iteration(self, t: int, progress: Callable[[str], None] = ...) -> IterationResult: ...

    def test_program(self) -> Program: ...

    def pending_record(self) -> PendingBatch | None: ...

    def restore_pending(self, record: PendingBatch | None) -> None: ...
