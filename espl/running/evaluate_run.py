"""``espl-bench evaluate RUN``: the weights x prompt breakdown of a finished run, on more problems.

A run ends with its breakdown on its own test items (``--eval-problems`` x ``--eval-samples``);
``evaluate`` scores it again from the run folder on the first ``--problems`` test problems with
``--samples`` samples, through the same evaluation protocol and breakdown code, with the run's
last committed weights and test-time program. The result goes to
``RUN/evaluation-<problems>x<samples>.json`` (atomically) and a table on stdout.
"""

from __future__ import annotations

from espl_bench.method.program import Pool
from espl_bench.method.scored_program import scored_program
from espl_bench.records import Breakdown, CellResult
from espl_bench.running.build import open_rescoring
from espl_bench.scoring.breakdown import breakdown
from espl_bench.scoring.evaluator import Evaluator, test_items


def evaluate_run(run: str, *, problems: int | None = None, samples: int | None = None) -> tuple[Breakdown, str]:
    """The breakdown of ``run`` and the path it was written to."""
    with open_rescoring(run) as (rundir, cfg, plan, weights):
        return _evaluate(rundir, cfg, plan, weights, problems, samples)


def _evaluate(rundir, cfg, plan, weights, problems: int | None, samples: int | None) -> tuple[Breakdown, str]:
    items = test_items(cfg, plan, problems, samples)
    done = rundir.latest()
    pool = Pool.from_record(rundir.pool(done))
    program, root = scored_program(cfg.test_rule, pool), pool.root()
    trained, evaluator = weights.trained(rundir, done), Evaluator(cfg, plan)

    def score(row: str, columns: list[str]) -> list[CellResult]:
        chosen = [root if column == "root" else program for column in columns]
        engine = trained if row == "trained" or not cfg.trains_weights else weights.base()
        return evaluator.score(engine, chosen, row, items)

    result = breakdown(score, trained=cfg.trains_weights, root=root.id, program=program.id,
                       same_prompt=program.render() == root.render())
    return result, str(rundir.write_evaluation(done, result))


def render(result: Breakdown) -> str:
    """The cells and effects as a table."""
    lines = [f"weights x prompt breakdown on the {result.items.describe()} (root {result.root}, "
             f"test-time program {result.program}); 95% intervals clustered by problem",
             "cell               success [95% interval]"]
    for name, cell in result.cells.items():
        lines.append(f"{name:<18} {cell.interval}")
    lines.append("effect                     difference [95% interval]")
    for name, effect in result.effects.items():
        note = "" if effect.from_variation else f"  ({effect.method}: no variation in the data)"
        lines.append(f"{name:<26} {effect.estimate:+.3f} [{effect.low:+.3f}, {effect.high:+.3f}]{note}")
    return "\n".join(lines) + "\n"
