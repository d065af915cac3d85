"""The test-time program: which program of the pool a run is scored with, by rule (:mod:`espl_bench.method_table`)."""

from __future__ import annotations

from espl_bench.method.program import Pool, Program
from espl_bench.method_table import TestRule


def scored_program(rule: TestRule, pool: Pool) -> Program:
    """The program a run is scored with under ``rule`` (the rules: :mod:`espl_bench.method_table`)."""
    if rule == "latest":
        return pool.latest()
    if rule == "root":
        return pool.root()
    if rule == "validation":
        return max(pool.programs, key=lambda p: p.mu)  # the first of the best: GEPA's best_idx
    return pool.best()
