"""The evaluation protocol: a (weights, prompt) pair scored on a fixed list of items.

Every score espl-bench reports comes from :func:`evaluate_prompts`, called by the run's
:class:`~espl_bench.scoring.evaluator.Evaluator`: the loops' test evaluations, GEPA's final one,
``select-best`` (on the validation split), ``calibrate`` (on the train split), ``espl-bench
evaluate`` and the weights x prompt breakdown. Its rules:

* The items are fixed by the run's split plan and sizes (:class:`EvalItems`): the first
  ``problems`` problems of the split, ``samples`` samples each. They never depend on the method.
* Each sample is seeded from its own coordinates, ``derive_seed("eval", seed, split, problem,
  sample)`` (and the rollout engine adds the turn): never from the method, the iteration, the
  run's training seed or what else shares the batch. With the in-process sampler, the same
  weights and the same prompt therefore give identical episodes, whichever method produced them.
* The result (:class:`~espl_bench.records.CellResult`) keeps every problem's outcomes, so
  intervals and paired comparisons (:mod:`espl_bench.stats`) can treat the problem as the unit.
"""

from __future__ import annotations

from collections.abc import Sequence

from espl_bench.agents.rollout import EpisodeId, EpisodeSpec, Rollout, RolloutEngine
from espl_bench.agents.sampler import SamplingParams, derive_seed
from espl_bench.records import CellResult, EvalItems


def item_specs(items: EvalItems, prompt: str, cell: int = 0) -> list[EpisodeSpec]:
    """The episodes of ``items`` under ``prompt``, each seeded from its coordinates (``cell`` only
    tells apart prompts scored in one batch; it is not a coordinate of the seed)."""
    return [EpisodeSpec(prompt, items.split, index, EpisodeId(problem=index, sample=n, cell=cell),
                        seed=derive_seed("eval", items.seed, items.split, index, n), placement=items.placement)
            for index in items.indices for n in range(items.samples)]


def evaluate_prompts(engine: RolloutEngine, prompts: Sequence[tuple[str, str]], items: EvalItems,
                     params: SamplingParams, *, weights: str = "") -> list[CellResult]:
    """Score each ``(prompt, program)`` pair with the engine's current weights on ``items`` (see the
    module docstring), all with the same weights, in one batch:
    a decoding step costs far less than twice as much for twice the rows, and each sample's seed
    is its own, so the results are those of separate calls."""
    specs = [spec for cell, (prompt, _) in enumerate(prompts) for spec in item_specs(items, prompt, cell)]
    rollouts = engine.run(specs, params)
    return [cell_from_rollouts([r for r in rollouts if r.spec.id.cell == cell], items, program, weights=weights)
            for cell, (_, program) in enumerate(prompts)]


def cell_from_rollouts(rollouts: Sequence[Rollout], items: EvalItems, program: str, *, weights: str = "") -> CellResult:
    by_index: dict[int, list[Rollout]] = {index: [] for index in items.indices}
    for r in rollouts:
        by_index[r.spec.index].append(r)
    ordered = [sorted(by_index[i], key=lambda r: r.spec.id.sample or 0) for i in items.indices]
    return CellResult(
        items, program,
        successes=tuple(tuple(int(r.success) for r in row) for row in ordered),
        rewards=tuple(tuple(float(r.reward) for r in row) for row in ordered),
        problem_ids=tuple(row[0].problem_id if row else "" for row in ordered),
        invalid_actions=sum(r.invalid_actions for r in rollouts), turns=sum(r.turns for r in rollouts),
        generated_tokens=sum(r.generated_tokens for r in rollouts), env_errors=sum(r.error is not None for r in rollouts),
        weights=weights)
