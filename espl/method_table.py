"""A method is a value: what it trains, what it evolves, its window, its loop, its test-time rule.

:data:`METHODS` is the one table every part of espl-bench reads (config checks, the loop, the
runner, ``select-best``, ``evaluate``, the board); nothing else tests a method's name.

Test-time rules (which program a run is scored with; :func:`espl_bench.method.scored_program.scored_program`
applies them):

* ``lcb``: the best TrueSkill lower bound mu - 2 sigma. Ratings come from training rollouts only,
  so the choice never sees the test split; the rule for rated populations (``espl``,
  ``evolution``).
* ``latest``: the newest program, the reference code's choice; the rule for a population of one
  (``self-reflection``), whose newest program is the tip of its one lineage.
* ``root``: the root program; the rule for a fixed prompt (``rl``).
* ``validation``: the best mean on the validation split, as the method measured it (``gepa``
  records its validation means as the programs' ``mu``).

``--test-program`` overrides the method's rule with ``lcb``, ``latest`` or ``root``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TestRule = Literal["lcb", "latest", "root", "validation"]


@dataclass(frozen=True)
class MethodSpec:
    """One method of the suite; see the module docstring."""

    name: str
    trains: bool  # RL weight updates (TRL)
    mutates: bool  # reflective mutation of the iteration's best program
    crosses: bool  # crossover of programs that won problems outright
    rated: bool  # TrueSkill ratings drive selection and the test-time program
    window: int | None  # programs selection draws from: None = --window, 1 = a population of one
    loop: Literal["espl", "gepa"]  # which loop runs it
    test_rule: TestRule
    summary: str

    @property
    def evolves(self) -> bool:
        return self.mutates or self.crosses

    @property
    def reflects(self) -> bool:
        """Whether the run calls a reflector (GEPA reflects through its own optimizer)."""
        return self.evolves or self.loop == "gepa"


METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("espl", trains=True, mutates=True, crosses=True, rated=True, window=None, loop="espl", test_rule="lcb",
               summary="E-SPL: RL weight updates and prompt evolution (mutation, crossover, TrueSkill)"),
    MethodSpec("rl", trains=True, mutates=False, crosses=False, rated=False, window=1, loop="espl", test_rule="root",
               summary="RL only: the root prompt in every slot, weights trained"),
    MethodSpec("evolution", trains=False, mutates=True, crosses=True, rated=True, window=None, loop="espl",
               test_rule="lcb", summary="prompt evolution only (mutation, crossover, TrueSkill), frozen weights"),
    MethodSpec("self-reflection", trains=False, mutates=True, crosses=False, rated=False, window=1, loop="espl",
               test_rule="latest", summary="a population of one, mutated every iteration, frozen weights"),
    MethodSpec("gepa", trains=False, mutates=False, crosses=False, rated=False, window=None, loop="gepa",
               test_rule="validation", summary="the gepa library's optimizer on the same rollout budget, frozen weights"),
)}


def method(name: str) -> MethodSpec:
    return METHODS[name]


def resolve_rule(spec: MethodSpec, override: str) -> TestRule:
    """The test-time rule of a run: the method's own unless ``--test-program`` names one."""
    return spec.test_rule if override == "auto" else override  # type: ignore[return-value]
