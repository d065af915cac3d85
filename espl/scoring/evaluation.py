"""The evaluation protocol: a (weights, prompt) pair scored on a fixed list of items.

Every score espl-bench reports comes from :func:`evaluate_prompts`, called by the run's
:class:`~espl_bench.scoring.evaluator.Evaluator`: the loops' test evaluations, GEPA's final one,
``select-best`` (on the validation split), ``calibrate`` (on the train split), ``espl-bench
evaluate`` and the weights x prompt breakdown. Its rules:

* The items are fixed by the run's split plan and sizes (:class:`EvalItems`): the first
  ``problems`` problems of the split, ``samples`` samples each. They never depend on the method.
* Each sample is seeded from its own coordinates, ``derive_seed("eval", seed, split, problem,
  sample)`` (and the rollout engine adds the turn): never from the method, the iteration, the
  run's training seed or what else shares the batch.
* Each cell is decoded in a call of its own, holding only its items: in bfloat16 a row's logits
  depend on its batch-mates (padding, the kernels' blocking), so the same cell scored beside
  another prompt's is not bit for bit the cell scored alone (the v8 arithmetic base/root cell
  differed by one problem of 100, ``leaderboards/calibrated-v8/README.md``). With the in-process
  sampler, the same weights and the same prompt therefore give identical episodes, whichever
  method or run scored them, and a stored cell (:mod:`espl_bench.scoring.cells`) is the cell.
* The result (:class:`~espl_bench.records.CellResult`) keeps every problem's outcomes, so
  intervals and paired comparisons (:mod:`espl_bench.stats`) can treat the problem as the unit.
"""

from __future__ import annotations

from collections.abc import Sequence

from espl_bench.agents.rollout import EpisodeId, EpisodeSpec, Rollout, RolloutEngine
from espl_bench.agents.sampler import SamplingParams, derive_seed
from espl_bench.records import CellResult, EvalItems


def item_specs(items: EvalItems, prompt: str) -> list[EpisodeSpec]:
    """The episodes of ``items`` under ``prompt``, each seeded from its coordinates."""
    return [EpisodeSpec(prompt, items.split, index, EpisodeId(problem=index, sample=n, cell=0),
                        seed=derive_seed("eval", items.seed, items.split, index, n), placement=items.placement)
            for index in items.indices for n in range(items.samples)]


def evaluate_prompts(engine: RolloutEngine, prompts: Sequence[tuple[str, str]], items: EvalItems,
                     params: SamplingParams, *, weights: str = "") -> list[CellResult]:
    """Score each ``(prompt, program)`` pair with the engine's current weights on ``items``, one
    engine call per pair (see the module docstring: batching cells together would save only the
    last, partial batch of each, and would make a cell depend on its neighbours in bfloat16)."""
    return [cell_from_rollouts(engine.run(item_specs(items, prompt), params), items, program, weights=weights)
            for prompt, program in prompts]


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
