"""``espl-bench select-best RUN``: pick a run's best committed iteration on its validation split.

The validation split comes from the run's split plan (:class:`envs.splits.SplitPlan`: the env's
own validation split, or the first train problems the run held out and never trained on). Each
committed iteration is scored as it would be deployed, through the evaluation protocol
(:mod:`espl_bench.scoring.evaluation`): its test-time program (the run's rule, :mod:`espl_bench.method_table`) with that
iteration's weights. The test split is never read.

The result goes to ``RUN/selection.json`` (atomically, through :mod:`espl_bench.rundir`) and a
table on stdout; the best iteration is the one with the highest validation success, ties going to
the earlier (cheaper) iteration. Each row carries its interval: iterations whose intervals overlap are not told apart by this split.
"""

from __future__ import annotations

import logging
from typing import Any

from espl_bench.errors import ConfigError
from espl_bench.method.program import Pool
from espl_bench.method.scored_program import scored_program
from espl_bench.records import EvalItems
from espl_bench.running.build import open_rescoring
from espl_bench.scoring.evaluator import Evaluator

log = logging.getLogger(__name__)


def select_best(run: str, *, samples: int = 2) -> dict:
    with open_rescoring(run) as (rundir, cfg, plan, weights):
        return _select(run, rundir, cfg, plan, weights, samples)


def _select(run: str, rundir, cfg, plan, weights, samples: int) -> dict:
    if plan.validation.size == 0:
        raise ConfigError(f"the run in {run} has no validation split; fix: start it with --validation-problems N (N > 0)")
    items = EvalItems(plan.validation.split, tuple(plan.validation.indices), samples, cfg.eval_seed, cfg.prompt_placement)
    rows: list[dict[str, Any]] = []
    evaluator = Evaluator(cfg, plan)
    for t in range(1, rundir.latest() + 1):
        program = scored_program(cfg.test_rule, Pool.from_record(rundir.pool(t)))
        cell = evaluator.score(weights.trained(rundir, t), [program], "trained", items)[0]
        rows.append({"iteration": t, "program": program.id, "success": cell.success,
                     "interval": cell.interval.to_dict(),
                     "mean_reward": sum(map(sum, cell.rewards)) / cell.rollouts, "prompt": program.render()})
        log.info("iteration %d (%s): validation success %.3f", t, program.id, cell.success)
    best = max(rows, key=lambda r: (r["success"], r["mean_reward"], -r["iteration"]))
    result = {"split": "validation", "measured_on": items.describe(), "problems": len(items.indices),
              "samples": samples, "iterations": [{k: v for k, v in r.items() if k != "prompt"} for r in rows],
              "best": {k: v for k, v in best.items() if k != "prompt"}, "best_prompt": best["prompt"]}
    rundir.write_selection(result)
    return result


def render(result: dict) -> str:
    lines = [f"validation split: {result['problems']} problems x {result['samples']} samples (the test split is not used)",
             "iteration  program  success [95% interval]   mean reward"]
    for row in result["iterations"]:
        mark = "  <- best" if row["iteration"] == result["best"]["iteration"] else ""
        ci = row["interval"]
        lines.append(f"{row['iteration']:>9}  {row['program']:>7}  {row['success']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"
                     f"   {row['mean_reward']:.3f}{mark}")
    return "\n".join(lines) + "\n"
