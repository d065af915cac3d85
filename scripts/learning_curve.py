"""What a long run's training curve shows: ``python scripts/learning_curve.py RUN_OR_RECORDS... [--window 10]``.

For each run (and for all of them together): training success of the first ``--window``
iterations against the last (each problem's success, the mean of its samples, is one cluster;
``espl_bench.stats.change``'s interval), the slope of a line through each iteration's training
success (per run: least squares with its standard error; over runs: the mean of the runs' slopes
with a t interval over them), and what the RL step did: the share of flat groups (all samples
scored alike, no advantage), the gradient norm and the loss of the steps that had an informative
group. Prints a markdown table
(``leaderboards/long/README.md`` quotes it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from scipy import stats as scipy_stats

from espl_bench import stats
from espl_bench.records import IterationMetrics
from espl_bench.rundir import RunDir, find_runs


def _windows(history: list[IterationMetrics], window: int) -> tuple[list[float], list[float]]:
    first, last = history[:window], history[-window:]
    return ([p for m in first for p in m.train_problem_success], [p for m in last for p in m.train_problem_success])


def _slope(history: list[IterationMetrics]):
    return scipy_stats.linregress([m.iteration for m in history], [m.train_success for m in history])


def _learner(history: list[IterationMetrics], key: str) -> list[float]:
    """``key`` of each step that had an informative group (a step of flat groups only computes nothing)."""
    return [m.learner[key] for m in history if m.learner and key in m.learner and m.flat_groups < m.groups]


def _row(name: str, histories: list[list[IterationMetrics]], window: int) -> str:
    pairs = [_windows(h, window) for h in histories]
    change = stats.change([x for a, _ in pairs for x in a], [x for _, b in pairs for x in b])
    slopes = [_slope(h) for h in histories]
    if len(slopes) == 1:
        slope = f"{slopes[0].slope:+.4f} ± {slopes[0].stderr:.4f} (SE)"
    else:
        values = [s.slope for s in slopes]
        half = scipy_stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
        slope = f"{statistics.fmean(values):+.4f} [{statistics.fmean(values) - half:+.4f}, {statistics.fmean(values) + half:+.4f}]"
    groups = sum(m.groups for h in histories for m in h)
    flat = sum(m.flat_groups for h in histories for m in h) / groups if groups else float("nan")
    norms = [x for h in histories for x in _learner(h, "grad_norm")]
    losses = [x for h in histories for x in _learner(h, "loss")]
    iterations = "/".join(str(len(h)) for h in histories)
    return (f"| {name} | {iterations} | {statistics.fmean(m.train_success for h in histories for m in h):.3f} | "
            f"{change.estimate:+.3f} [{change.low:+.3f}, {change.high:+.3f}] | {slope} | {flat:.0%} | "
            f"{statistics.fmean(norms):.3f} ({min(norms):.3f}-{max(norms):.3f}) | {statistics.fmean(losses):+.4f} |")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path)
    parser.add_argument("--window", type=int, default=10, help="iterations at each end of the curve")
    args = parser.parse_args(argv)
    runs = {folder.name: RunDir(folder).history() for folder in sorted(find_runs(args.roots))}
    runs = {name: h for name, h in runs.items() if len(h) >= 2 * args.window}
    if not runs:
        print(f"no run with at least {2 * args.window} iterations under {[str(r) for r in args.roots]}", file=sys.stderr)
        return 2
    print(f"| run | iterations | mean training success | last {args.window} - first {args.window} [95% CI] | "
          "slope per iteration | flat groups | gradient norm (range) | mean loss |")
    print("|---|---|---|---|---|---|---|---|")
    for name, history in runs.items():
        print(_row(name, [history], args.window))
    if len(runs) > 1:
        print(_row(f"all {len(runs)}", list(runs.values()), args.window))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
