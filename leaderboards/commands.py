"""``espl-bench leaderboard`` and ``espl-bench bench [compare]``: their flags and handlers (running a
suite's grid is :mod:`espl_bench.leaderboards.bench`)."""

from __future__ import annotations

import argparse
import logging
import sys

from espl_bench.errors import ConfigError

log = logging.getLogger(__name__)


def add_parsers(sub) -> None:
    board = sub.add_parser("leaderboard", help="aggregate run folders into markdown and a static HTML leaderboard")
    board.add_argument("runs", nargs="+", help="folders to search for the run folders of finished runs")
    board.add_argument("--out", default="leaderboards/site", help="where to write index.html and leaderboard.md")
    bench = sub.add_parser("bench", help="run a fixed score suite, or compare results: espl-bench bench compare CUR BASE",
                           description="Run a suite's grid (leaderboards/suite.py) and write its results, or compare "
                           "two results files. Each run is its own process; a finished run is never run again.")
    bench.add_argument("action", nargs="?", choices=["run", "compare"], default="run")
    bench.add_argument("files", nargs="*", help="with compare: CURRENT.json BASELINE.json")
    bench.add_argument("--suite", default="smoke", help="suite name (see leaderboards/suite.py; smoke: every method "
                       "once at the quickstart's size, to check a machine or cluster before the real grid)")
    bench.add_argument("--out", default="runs/bench", help="folder for the suite's run folders (on a cluster: a "
                       "shared filesystem, or the same path on each node's disk)")
    bench.add_argument("--results", default=None, help="results file to write (default: OUT/results.json)")
    bench.add_argument("--collect", action="store_true", help="run nothing: write results for the suite's finished runs in --out")
    bench.add_argument("--keep", default=None, help="folder of compact copies of finished runs (records, no weights): each "
                       "finished run is copied there, and a run already there is not run again (commit it to complete "
                       "a suite later, or on other machines)")
    bench.add_argument("--seeds", default=None, help="run only these seeds, comma-separated (e.g. to split a suite across machines)")
    bench.add_argument("--envs", default=None, help="run only these env ids, comma-separated (e.g. cheap ones first)")
    bench.add_argument("--methods", default=None, help="run only these methods, comma-separated (e.g. the pairs to power first)")
    bench.add_argument("--level", type=float, default=0.95, help="compare: confidence level of the paired interval")
    bench.add_argument("--floor", type=float, default=0.02, help="compare: smallest drop that counts as a regression")
    bench.add_argument("--allow-missing", action="store_true", help="compare: a baseline entry without a result is not a failure")
    _add_grid_flags(bench.add_argument_group("where the runs execute"))
    from espl_bench.config import add_run_flags

    add_run_flags(bench.add_argument_group("run options, applied to every run of the suite (the suite sets env, "
                                           "method, seed and its budget; see espl-bench run --help)"),
                  exclude=frozenset({"out"}))


def _add_grid_flags(grid) -> None:
    from espl_bench.leaderboards.executors import EXECUTORS

    grid.add_argument("--executor", choices=EXECUTORS, default="local", help="local: one run at a time, each a child "
                      "process of this one; ray: each run a Ray task in its own process on a Ray cluster, several at "
                      "once (pip install -e '.[ray]')")
    grid.add_argument("--address", default=None, help="ray: the cluster to join (auto: the one `ray start` made on "
                      "this node; HOST:6379 for a head elsewhere); default: start a Ray instance on this machine")
    grid.add_argument("--max-parallel", type=_number(int, 1), default=None, help="ray: at most this many runs at once "
                      "(default: as many as the cluster's CPUs and GPUs hold)")
    grid.add_argument("--retries", type=_number(int, 0), default=1, help="times a run that crashed or was lost is "
                      "started again, resuming its folder (a run that refused its input is not retried)")
    grid.add_argument("--cpus-per-run", type=_number(float, 0, above=True), default=1.0, help="ray: CPUs each run asks for (its "
                      "torch threads)")
    grid.add_argument("--gpus-per-run", type=_number(float, 0), default=None, help="ray: GPUs each run asks for, "
                      "fractions allowed (default: 1 on a cluster with GPUs, else 0)")


def _number(kind, least, above: bool = False):
    """An argparse type: a ``kind`` at least ``least`` (above it, with ``above``)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < least or (above and value == least):
            raise argparse.ArgumentTypeError(f"{text!r} must be {'above' if above else 'at least'} {least}")
        return value
    return parse


def leaderboard(args: argparse.Namespace) -> int:
    from espl_bench.leaderboards.aggregate import build_leaderboard
    from espl_bench.leaderboards.render import render_markdown, render_site

    boards = build_leaderboard(args.runs)
    if not boards:
        from espl_bench.rundir import SUMMARY

        raise ConfigError(f"no run folders with a {SUMMARY} under {args.runs}; fix: point it at espl-bench run --out folders")
    index = render_site(boards, args.out)
    sys.stdout.write(render_markdown(boards) + f"\nwritten: {index}\n")
    return 0


def bench(args: argparse.Namespace) -> int:
    if args.action == "compare":
        return compare(args)
    from espl_bench.leaderboards.bench import run_suite

    return run_suite(args)


def compare(args: argparse.Namespace) -> int:
    from espl_bench.leaderboards.regression import (
        ScoreFileError,
        compare_files,
        render_table,
    )

    if len(args.files) != 2:
        raise ConfigError("bench compare needs two files; fix: espl-bench bench compare CURRENT.json BASELINE.json")
    try:
        if not 0 < args.level < 1 or args.floor < 0:
            raise ConfigError(f"--level {args.level} / --floor {args.floor} are invalid; fix: a level in (0, 1), a floor >= 0")
        report = compare_files(args.files[0], args.files[1], floor=args.floor, allow_missing=args.allow_missing,
                               level=args.level)
    except ScoreFileError as exc:
        raise ConfigError(f"{exc}; fix: pass results written by espl-bench bench") from None
    sys.stdout.write(render_table(report) + "\n")
    if not report.passed:
        log.error("score regression: %d of %d results fell beyond tolerance", len(report.failures), len(report.comparisons))
        return 1
    return 0
