"""``espl-bench leaderboard`` and ``espl-bench bench [compare]``: the command handlers."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

from espl_bench.errors import ConfigError, RecordError

log = logging.getLogger(__name__)


def add_parsers(sub) -> None:
    board = sub.add_parser("leaderboard", help="aggregate run folders into markdown and a static HTML leaderboard")
    board.add_argument("runs", nargs="+", help="folders to search for run folders (summary.json)")
    board.add_argument("--out", default="leaderboards/site", help="where to write index.html and leaderboard.md")
    bench = sub.add_parser("bench", help="run a fixed score suite, or compare results: espl-bench bench compare CUR BASE")
    bench.add_argument("action", nargs="?", choices=["run", "compare"], default="run")
    bench.add_argument("files", nargs="*", help="with compare: CURRENT.json BASELINE.json")
    bench.add_argument("--suite", default="smoke", help="suite name (see leaderboards/suite.py)")
    bench.add_argument("--out", default="runs/bench", help="folder for the suite's run folders")
    bench.add_argument("--results", default=None, help="results file to write (default: OUT/results.json)")
    bench.add_argument("--model", default=None, help="override the suite's model (e.g. a local folder)")
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


def leaderboard(args: argparse.Namespace) -> int:
    from espl_bench.leaderboards.aggregate import build_leaderboard
    from espl_bench.leaderboards.render import render_markdown, render_site

    boards = build_leaderboard(args.runs)
    if not boards:
        raise ConfigError(f"no run folders with a summary.json under {args.runs}; fix: point it at espl-bench run --out folders")
    index = render_site(boards, args.out)
    sys.stdout.write(render_markdown(boards) + f"\nwritten: {index}\n")
    return 0


def bench(args: argparse.Namespace) -> int:
    return compare(args) if args.action == "compare" else run_suite(args)


def run_suite(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from espl_bench.leaderboards.scores import ScoreRecord, dump_scores
    from espl_bench.leaderboards.suite import get_suite

    try:
        suite = get_suite(args.suite)
    except KeyError:
        raise ConfigError(f"unknown suite {args.suite!r}; fix: use one defined in leaderboards/suite.py") from None
    out = Path(args.out)
    seeds = _seeds(args.seeds)
    envs = _names("--envs", args.envs, {c.env for c in suite.configs}, suite.name)
    methods = _names("--methods", args.methods, {c.method for c in suite.configs}, suite.name)
    records = []
    for config in suite.configs:
        if ((seeds is not None and config.seed not in seeds) or (envs is not None and config.env not in envs)
                or (methods is not None and config.method not in methods)):
            continue
        if args.model:
            config = replace(config, model=args.model)
        sid = config.suite_id
        name = f"{sid.env.replace('/', '_')}--{sid.method}--{sid.seed}--{sid.budget}"
        folder = out / name
        kept = Path(args.keep) / name if args.keep else None
        if kept is not None and _finished(kept):  # RecordError (an EsplError): one line naming the file and the fix
            log.info("bench: %s is finished (kept in %s)", name, args.keep)
            folder = kept
        elif args.collect or _finished(folder):
            if not _finished(folder):
                log.info("bench: %s is not finished; left out", folder)
                continue
        else:
            resume = ["--resume"] if (folder / "run.json").exists() else []
            log.info("bench: %s %s seed %d", sid.env, sid.method, sid.seed)
            # Each run in a child process: its memory returns to the OS when it ends (in one
            # process the allocator kept ~0.6 GB per finished run of the 135M model) and a crash
            # stays inside its run.
            # The runs share their base-weights cells (the root prompt's above all): equal by the protocol.
            cells = ["--cell-store", str(out / ".cells")]
            code = subprocess.run([sys.executable, "-m", "espl_bench", "run", *config.run_args(str(folder)), *resume,
                                   *cells]).returncode
            if code != 0:
                log.error("bench: %s failed (exit %d)", folder, code)
                return code
        if kept is not None and folder != kept:
            keep_compact(folder, kept)
        try:
            records.append(ScoreRecord.from_summary(sid, _summary(folder)))
        except ValueError as exc:
            raise ConfigError(f"{folder}: {exc}; fix: re-run it (delete the folder, then run the suite again)") from None
    results = Path(args.results or out / "results.json")
    results.parent.mkdir(parents=True, exist_ok=True)
    dump_scores(records, results)
    sys.stdout.write(f"suite {suite.name} v{suite.version}: {len(records)} results in {results}\n")
    return 0


# What the board needs from a finished run (leaderboards.aggregate.load_run and load_tree): its
# records, not its weights, rollouts or reflector transcripts (summary.json holds the breakdown).
COMPACT = ("run.json", "summary.json", "metrics.jsonl", "best_prompt.txt", "LATEST")


def keep_compact(folder: Path, dest: Path) -> None:
    """Copy ``folder``'s records and its last iteration's pool into ``dest`` (replaced whole)."""
    import shutil
    import tempfile

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".keep-", dir=dest.parent))
    try:
        for name in COMPACT:
            if (folder / name).is_file():
                shutil.copy2(folder / name, tmp / name)
        latest = (folder / "LATEST").read_text().strip() if (folder / "LATEST").is_file() else ""
        step = f"{int(latest):06d}" if latest.isdigit() else ""
        pool = folder / "iterations" / step / "pool.json"
        if step and pool.is_file():
            (tmp / "iterations" / step).mkdir(parents=True)
            shutil.copy2(pool, tmp / "iterations" / step / "pool.json")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _summary(folder: Path):
    from espl_bench.records import RunSummary

    path = folder / "summary.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RecordError(f"{path} is unreadable ({type(exc).__name__})") from None
    return RunSummary.from_dict(data, str(path))


def _finished(folder: Path) -> bool:
    """Whether the run in ``folder`` finished (a summary this version cannot read is an error)."""
    return (folder / "summary.json").is_file() and _summary(folder).finished


def _seeds(text: str | None) -> set[int] | None:
    if text is None:
        return None
    try:
        return {int(part) for part in text.split(",") if part.strip()}
    except ValueError:
        raise ConfigError(f"--seeds={text!r} is invalid; fix: pass integers separated by commas, e.g. --seeds 0,1") from None


def _names(flag: str, text: str | None, known: set[str], suite: str) -> set[str] | None:
    if text is None:
        return None
    names = {part.strip() for part in text.split(",") if part.strip()}
    if unknown := sorted(names - known):
        raise ConfigError(f"{flag} names {', '.join(unknown)}, which suite {suite!r} does not run; fix: pick from "
                          f"{', '.join(sorted(known))}")
    return names


def compare(args: argparse.Namespace) -> int:
    from espl_bench.leaderboards.scores import (
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
