"""``espl-bench bench``: run a suite's grid (or collect it), then write its results and report.

The grid is the suite's configurations (less those ``--seeds``/``--envs``/``--methods`` leave
out), each a run folder ``OUT/<env>--<method>--<seed>--<budget>``. A run with records already (in
``--keep``, or finished in ``OUT``) is not run again; the others go to an executor
(:mod:`espl_bench.leaderboards.executors`), are retried by resuming their folder when they crash
or are lost (``--retries``; a run that refused its input is not retried), and never stop the
others. Every run option given to ``bench`` reaches every run; the ones the suite sets (env,
method, seed, budget) are refused. All records of one results file share one
:class:`~espl_bench.leaderboards.identity.SuiteIdentity`; a grid that would mix them is refused
before anything runs, with the fix.

Contract: :func:`run_suite` returns 0 when every run of the grid has records, 1 when some failed
(their table rows say why; the results hold the others), and raises ``ConfigError`` for bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from espl_bench.config import RunConfig, add_run_flags, build_config, given_values
from espl_bench.errors import ConfigError, RecordError, RunDirError
from espl_bench.leaderboards.grid import (
    REFUSED,
    RunOutcome,
    RunSpec,
    compact_files,
    write_compact,
)
from espl_bench.leaderboards.identity import SuiteIdentity, read_identity, settings_of
from espl_bench.leaderboards.suite import Suite, SuiteConfig, get_suite
from espl_bench.rundir import SUMMARY, RunDir

log = logging.getLogger(__name__)

# Run options the suite sets for each of its runs (besides its budget's), or bench itself.
SUITE_OWNED = frozenset({"env", "env_kwargs", "method", "seed", "out", "resume", "force", "cell_store", "run_group",
                         "iterations", "programs", "batch_size", "group_size", "eval_problems", "eval_samples",
                         "max_new_tokens"})


@dataclass
class Entry:
    """One run of the grid, and where its records are (``source``) once it has them."""

    config: SuiteConfig
    name: str
    folder: Path
    kept: Path | None
    source: Path | None = None
    outcome: RunOutcome | None = None
    attempts: int = 0
    retried: tuple[str, ...] = ()


def run_suite(args: argparse.Namespace) -> int:
    suite = _suite(args.suite)
    given = _given(args, suite)
    out = Path(args.out).resolve()
    entries = _entries(suite, args, given, out)
    todo = [e for e in entries if not _has_records(e)]
    if args.collect:
        for e in todo:
            log.info("bench: %s is not finished; left out", e.folder)
        _one_identity([e for e in entries if e.source])
    elif entries:
        _run_grid(suite, entries, todo, args, given, out)
    records = _records(entries)
    results = Path(args.results or out / "results.json")
    results.parent.mkdir(parents=True, exist_ok=True)
    from espl_bench.leaderboards.regression import dump_scores

    dump_scores(records, results)
    sys.stdout.write(render_report(entries) if todo else "")
    sys.stdout.write(f"suite {suite.name} v{suite.version}: {len(records)} results in {results}\n")
    return 1 if any(e.outcome is not None and not e.outcome.finished for e in entries) else 0


def _suite(name: str) -> Suite:
    try:
        return get_suite(name)
    except KeyError:
        raise ConfigError(f"unknown suite {name!r}; fix: use one defined in leaderboards/suite.py") from None


def _given(args: argparse.Namespace, suite: Suite) -> dict:
    """The run options given to bench; the ones the suite sets are refused."""
    given = given_values(args, exclude=frozenset({"out"}))  # bench's --out is the suite's folder
    owned = sorted(given.keys() & suite_owned(suite))
    if owned:
        flags = ", ".join("--" + name.replace("_", "-") for name in owned)
        raise ConfigError(f"{flags}: set by suite {suite.name!r} for each of its runs (env, method, seed, budget); "
                          "fix: drop it (--envs, --methods and --seeds pick runs of the suite; other sizes make "
                          "another suite in leaderboards/suite.py)")
    return given


def suite_owned(suite: Suite) -> set[str]:
    """The run options ``suite`` sets: :data:`SUITE_OWNED` and its budgets' further flags."""
    extra = {flag[2:].removeprefix("no-").replace("-", "_") for c in suite.configs for flag in c.budget.extra
             if flag.startswith("--")}
    return set(SUITE_OWNED) | extra


def _entries(suite: Suite, args: argparse.Namespace, given: dict, out: Path) -> list[Entry]:
    seeds = _seeds(args.seeds)
    envs = _names("--envs", args.envs, {c.env for c in suite.configs}, suite.name)
    methods = _names("--methods", args.methods, {c.method for c in suite.configs}, suite.name)
    entries = []
    for config in suite.configs:
        if ((seeds is not None and config.seed not in seeds) or (envs is not None and config.env not in envs)
                or (methods is not None and config.method not in methods)):
            continue
        if "model" in given:
            config = replace(config, model=given["model"])
        sid = config.suite_id
        name = f"{sid.env.replace('/', '_')}--{sid.method}--{sid.seed}--{sid.budget}"
        entries.append(Entry(config, name, out / name, Path(args.keep) / name if args.keep else None))
    return entries


def _has_records(entry: Entry) -> bool:
    """Whether ``entry`` is finished (kept, or in its folder: then kept too); sets its ``source``."""
    if entry.kept is not None and _finished(entry.kept):  # RecordError: one line naming the file and the fix
        log.info("bench: %s is finished (kept in %s)", entry.name, entry.kept.parent)
        entry.source = entry.kept
    elif _finished(entry.folder):
        entry.source = entry.folder
        if entry.kept is not None:
            write_compact(compact_files(entry.folder), entry.kept)
    return entry.source is not None


def _run_grid(suite: Suite, entries: list[Entry], todo: list[Entry], args: argparse.Namespace, given: dict,
              out: Path) -> None:
    """Run ``todo`` on the chosen executor, once the runs with records are known to have been made
    as these would be (the identity is probed where the runs run)."""
    from espl_bench.leaderboards.executors import RayExecutor, make_executor

    executor = make_executor(args.executor, args.address, args.max_parallel)
    try:
        gpus = args.gpus_per_run if args.gpus_per_run is not None else (
            1.0 if isinstance(executor, RayExecutor) and executor.gpus() > 0 else 0.0)
        specs = [_spec(e, suite, given, out, args.cpus_per_run, gpus) for e in todo or entries[:1]]
        identity = executor.probe(specs[0])
        done = [e for e in entries if e.source]
        _refuse_other_identities(done, identity)
        if not todo:
            return
        specs = [replace(s, identity=identity, argv=(*s.argv, "--run-group", identity.group(suite.name)))
                 for s in specs]
        log.info("bench: %d runs to make (%s) on %s", len(specs), identity.describe(), args.executor)
        _drive(executor, specs, {e.name: e for e in todo}, args.retries, suite, done)
    finally:
        executor.close()


def _spec(entry: Entry, suite: Suite, given: dict, out: Path, cpus: float, gpus: float) -> RunSpec:
    argv = (*entry.config.run_args(str(entry.folder)), *_flags({k: v for k, v in given.items() if k != "model"}),
            # the runs share their base-weights cells (the root prompt's above all): equal by the protocol
            "--cell-store", str(out / ".cells"))
    config = _config(argv)
    settings = settings_of(config.model_dump(mode="json", include=set(given)))  # as validated: one form per value
    return RunSpec(entry.name, str(entry.folder), argv, config, suite.version, settings,
                   str(out / ".logs" / f"{entry.name}.log"), cpus, gpus)


def _config(argv: tuple[str, ...]) -> RunConfig:
    """The config ``espl-bench run argv`` makes (checked here, before any run starts)."""
    parser = argparse.ArgumentParser(prog="espl-bench run", add_help=False)
    add_run_flags(parser)
    return build_config(given_values(parser.parse_args(list(argv))))


def _flags(values: dict) -> list[str]:
    """``values`` as ``espl-bench run`` flags."""
    flags: list[str] = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return flags


def _source(entry: Entry) -> Path:
    """Where a finished entry's records are (set by :func:`_has_records` for every finished entry)."""
    assert entry.source is not None
    return entry.source


def _refuse_other_identities(done: list[Entry], identity: SuiteIdentity) -> None:
    for entry in done:
        made = read_identity(_source(entry))
        if made != identity:
            where = "--keep" if entry.source == entry.kept else "--out"
            raise ConfigError(f"{entry.source} in {where} was made as {made.describe()}, and this grid runs as "
                              f"{identity.describe()} (they differ in {'; '.join(made.differences(identity))}); "
                              f"fix: give the options its records were made with, or start this grid in another "
                              f"{where} folder")


def _one_identity(done: list[Entry]) -> None:
    """Records collected into one results file must share one identity."""
    made = [(e, read_identity(_source(e))) for e in done]
    for entry, identity in made[1:]:
        first, first_identity = made[0]
        if identity != first_identity:
            raise ConfigError(f"{first.source} and {entry.source} were made under different identities "
                              f"({'; '.join(first_identity.differences(identity))}); fix: collect each kind from a "
                              "folder of its own (--keep/--out) into results of its own (--results)")


def _drive(executor, specs: list[RunSpec], entries: dict[str, Entry], retries: int, suite: Suite,
           done: list[Entry]) -> None:
    """Submit every spec, collect outcomes as runs finish, retry crashed or lost ones."""
    from tqdm.auto import tqdm

    for spec in specs:
        executor.submit(spec)
    left = len(specs)
    with tqdm(total=len(specs) + len(done), initial=len(done), desc=f"bench {suite.name}", unit="run",
              dynamic_ncols=True) as bar:
        while left:
            spec, outcome = executor.next_done()
            entry = entries[spec.name]
            entry.attempts += 1
            if not outcome.finished and outcome.code not in (2, REFUSED) and entry.attempts <= retries:
                log.warning("bench: %s failed (%s); retrying it, resuming its folder", spec.name, outcome.reason)
                entry.retried += (outcome.reason,)
                executor.submit(spec)
                continue
            left -= 1
            _settle(entry, outcome)
            bar.update(1)
            failed = sum(1 for e in entries.values() if e.outcome is not None and not e.outcome.finished)
            bar.set_postfix_str(f"failed {failed}, retried {sum(1 for e in entries.values() if e.retried)}")


def _settle(entry: Entry, outcome: RunOutcome) -> None:
    """Record a run's last outcome; a finished run's records are kept and read from its folder."""
    entry.outcome = outcome
    if not outcome.finished:
        log.error("bench: %s failed: %s (output: its log under OUT/.logs)", entry.name, outcome.reason)
        return
    if entry.kept is not None:
        write_compact(outcome.records, entry.kept)
        entry.source = entry.kept
    else:  # the folder may be on another node's disk: read the records the run sent back
        entry.source = entry.folder if RunDir(entry.folder).has_summary() else None
    log.info("bench: %s finished%s", entry.name, f" after {entry.attempts} attempts" if entry.attempts > 1 else "")


def _records(entries: list[Entry]) -> list:
    """The score records of the entries with records, in the suite's order."""
    from espl_bench.leaderboards.regression import ScoreRecord
    from espl_bench.records import RunSummary

    records = []
    for entry in entries:
        if entry.source is not None:
            summary = _summary(entry.source)
        elif entry.outcome is not None and entry.outcome.finished and entry.outcome.summary is not None:
            summary = RunSummary.from_dict(json.loads(entry.outcome.summary), f"{entry.name}/{SUMMARY}")
        else:
            continue
        try:
            records.append(ScoreRecord.from_summary(entry.config.suite_id, summary))
        except ValueError as exc:
            raise ConfigError(f"{entry.folder}: {exc}; fix: re-run it (delete the folder, then run the suite again)") from None
    return records


def render_report(entries: list[Entry]) -> str:
    """The grid's table: each run's status, attempts, and why it failed or was retried."""
    rows = [("run", "status", "attempts", "reason")]
    for e in entries:
        status = ("had records" if e.outcome is None else "finished" if e.outcome.finished else "FAILED")
        notes = [e.outcome.reason] if e.outcome is not None and not e.outcome.finished else []
        notes += [f"retried after: {reason}" for reason in e.retried]
        rows.append((e.name, status, str(e.attempts or "-"), "; ".join(notes) or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row[:3], widths)), row[3]]).rstrip() for row in rows]
    ran = [e for e in entries if e.outcome is not None]
    finished = sum(e.outcome.finished for e in ran if e.outcome is not None)
    lines.append(f"{finished} finished, {len(ran) - finished} failed, {sum(1 for e in ran if e.retried)} retried, "
                 f"{len(entries) - len(ran)} had records already")
    return "\n".join(lines) + "\n"


def _summary(folder: Path):
    try:
        return RunDir(folder).summary()
    except RunDirError as exc:  # a missing or unreadable file: the record error the callers expect
        raise RecordError(str(exc)) from None


def _finished(folder: Path) -> bool:
    """Whether the run in ``folder`` finished (a summary this version cannot read is an error)."""
    return RunDir(folder).has_summary() and _summary(folder).finished


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
