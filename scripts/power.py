"""The power computation that sizes the board's evaluation, from a calibration report.

Design: every method is scored on the same P test problems, one sample each, by S runs (seeds).
The difference of two methods' means then has variance

    Var(d) = 2 * E[p_i (1 - p_i)] / (S * P)  +  2 * tau^2 / S

where p_i is problem i's success probability under the policy and tau^2 the variance of a
method's true success across seeds (what training or evolution does differently per seed). The
first term is bounded by p (1 - p) at the mean success p (differences between problems only make
it smaller), and it assumes the two methods' samples are independent (the protocol's shared
sample seeds make them positively correlated when the policies are alike, which lowers it). The
detectable difference is (z_0.975 + z_0.8) * sqrt(Var(d)) (espl_bench.stats.detectable_difference).

Usage: python scripts/power.py calibration/rg_letter_counting-v0/calibration.json --seeds 3
"""

from __future__ import annotations

import argparse
import json
import math

from espl_bench import stats


def detectable(p: float, seeds: int, problems: int, tau: float) -> float:
    var = 2 * p * (1 - p) / (seeds * problems) + 2 * tau**2 / seeds
    return stats.detectable_difference(math.sqrt(var))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("calibration", help="calibration.json written by espl-bench calibrate")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.05, help="detectable difference wanted")
    parser.add_argument("--problems", type=int, nargs="*", default=[64, 128, 200, 300, 500])
    args = parser.parse_args()
    report = json.loads(open(args.calibration, encoding="utf-8").read())
    chosen = report["points"][report["chosen"]] if report.get("chosen") is not None else max(
        report["points"], key=lambda q: q["success"]["estimate"])
    p = chosen["success"]["estimate"]
    print(f"{report['env']} {chosen['env_kwargs']}: success p = {p:.3f} on {chosen['problems']} train problems "
          f"(bound on E[p_i (1 - p_i)]: {p * (1 - p):.4f}); {args.seeds} seeds, one sample a problem")
    z = stats.detectable_difference(1.0)
    needed = math.ceil(2 * p * (1 - p) * (z / args.target) ** 2 / args.seeds)
    print(f"problems for a detectable difference of {args.target:.2f} with tau = 0: {needed}")
    print("detectable difference by test problems P and seed-to-seed sd tau:")
    taus = (0.0, 0.01, 0.02, 0.05)
    print("      P  " + "  ".join(f"tau={t:.2f}" for t in taus))
    for n in args.problems:
        print(f"  {n:5d}  " + "  ".join(f"{detectable(p, args.seeds, n, t):8.3f}" for t in taus))


if __name__ == "__main__":
    main()
