"""The power computation that sizes the board's evaluation, from a calibration report.

Design: every method is scored on the same P test problems, one sample each, by S runs (seeds).
The board's statistics (``espl_bench.stats``) read a method's results as a crossed design,
``Y[s, p] = mu + a_p + b_s + e_sp``: tau^2 = Var(b_s) is the variance of a method's *true*
success from seed to seed (what training or evolution does differently per seed), and the
residual variance sigma^2 = Var(e_sp) holds the seed x problem interaction and the binomial noise
of one sample, bounded by E[p_i (1 - p_i)] <= p (1 - p) at the mean success p. The paired
difference of two methods then has variance

    Var(d) = sigma_D^2 / P + 2 tau^2 / S + 2 sigma^2 / (S P)

(sigma_D^2: how differently the two methods find the problems hard, taken as 0 here: methods
around one policy). The observed spread of a method's test success over seeds is NOT tau: it
holds the binomial noise sigma^2 / P of a P-problem mean too (0.02 at p = 0.15, P = 300); the
variance components of ``--records`` take it out. The detectable difference is stated as the
board states it (``espl_bench.stats.detectable_difference`` on ``espl_bench.stats.design``): 80%
power for the t test the board runs, whose degrees of freedom few seeds make small, at the level
of the board's groups (5% familywise, Holm's first step over all pairs of ``--methods``).

Usage: python scripts/power.py calibration/rg_letter_counting-v0/calibration.json --seeds 5 \
           [--problems 300 500] [--taus 0 0.025] [--records leaderboards/calibrated-v8/records]
"""

from __future__ import annotations

import argparse
import json
import math

from espl_bench import stats


def detectable(p: float, seeds: int, problems: int, tau: float, methods: int) -> float:
    """The detectable difference of a pair of methods with seed sd ``tau`` (see the docstring)."""
    method = stats.VarianceComponents(seed=tau**2, problem=0.0, residual=p * (1 - p))
    return stats.detectable_difference(stats.design([method, method], seeds, problems), stats.tier_alpha(methods))


def seed_spread(records: str) -> None:
    """Each committed method's seed-to-seed sd of test success: observed, and tau without the binomial noise."""
    from espl_bench.leaderboards.aggregate import build_leaderboard

    for board in build_leaderboard([records]):
        print(f"{board.env} ({board.measured_on}): sd over seeds of test success, observed / tau")
        for row in board.rows:
            if row.matrix is None or row.matrix.shape[0] < 2:
                continue
            tau = math.sqrt(stats.components(row.matrix).seed)
            print(f"  {row.method:16s} {row.matrix.mean(axis=1).std(ddof=1):.4f} / {tau:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("calibration", help="calibration.json written by espl-bench calibrate")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", type=int, default=5, help="methods on the board (sets the groups' level)")
    parser.add_argument("--problems", type=int, nargs="*", default=[100, 200, 300, 500, 1000])
    parser.add_argument("--taus", type=float, nargs="*", default=[0.0, 0.01, 0.02, 0.03],
                        help="seed-to-seed sds of a method's true success (both methods of a pair)")
    parser.add_argument("--records", help="a board's records: estimate each method's tau from them")
    args = parser.parse_args()
    report = json.loads(open(args.calibration, encoding="utf-8").read())
    chosen = report["points"][report["chosen"]] if report.get("chosen") is not None else max(
        report["points"], key=lambda q: q["success"]["estimate"])
    p = chosen["success"]["estimate"]
    level = stats.tier_alpha(args.methods)
    print(f"{report['env']} {chosen['env_kwargs']}: success p = {p:.3f} on {chosen['problems']} train problems "
          f"(bound on the residual variance E[p_i (1 - p_i)]: {p * (1 - p):.4f}); {args.seeds} seeds, one sample a "
          f"problem; 80% power at two-sided {level:.4f} ({args.methods} methods, 5% familywise)")
    print("detectable difference by test problems P and a method's true seed-to-seed sd tau:")
    taus = args.taus
    print("      P  " + "  ".join(f"tau={t:<4g}" for t in taus))
    for n in args.problems:
        print(f"  {n:5d}  " + "  ".join(f"{detectable(p, args.seeds, n, t, args.methods):8.3f}" for t in taus))
    if args.records:
        seed_spread(args.records)


if __name__ == "__main__":
    main()
