"""Aggregation of run folders into leaderboards: one board per env, one row per (method, model).

Contract:

* :func:`find_run_dirs` returns, sorted, every folder under the roots holding ``summary.json``
  or ``run.json`` (a root may itself be a run folder).
* :func:`load_run` reads one folder into a :class:`RunRecord` or raises :class:`RunLoadError`:
  ``summary.json`` (schema 2: test results with per-problem outcomes, written by the evaluation
  protocol) and ``run.json`` are required; the per-iteration metrics come from ``metrics.jsonl``,
  else ``iterations/N/metrics.json``, in both cases only up to the commit marker ``LATEST``.
  A folder written before the evaluation protocol is refused with the fix (re-run it).
* :func:`load_runs` logs a warning naming each folder it cannot read and skips it.
* :func:`aggregate` groups runs by env, then (method, model). Every row of an env is measured on
  the problems all of the env's runs share (their test items); success is the mean over seeds
  and problems with a 95% interval from the crossed variance components (:func:`espl_bench.stats.interval`);
  every pair of methods is tested, Holm-adjusted over all pairs, and the methods get letters the
  data cannot separate (:func:`espl_bench.stats.tiers`); each pair states the smallest difference
  it could detect at the letters' level, or that its runs ended on identical cells
  (:func:`shared_cells`). The weights x prompt cells and effects are combined over seeds the
  same way. Budgets (rollouts, tokens, reflector calls, seconds) are per run, averaged over the
  row's seeds. Rows are sorted by mean success.
* :func:`load_tree` reads a run's latest ``pool.json`` into :class:`TreeNode` s, evicted
  ancestors (known from ``lineage`` only) included with ``in_pool=False``.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from espl_bench import stats
from espl_bench.errors import RecordError, RunDirError
from espl_bench.method.program import Pool
from espl_bench.records import (
    Budget,
    CellResult,
    GepaSelection,
    IterationMetrics,
    Provenance,
)
from espl_bench.rundir import RunDir, find_runs

log = logging.getLogger(__name__)


class RunLoadError(ValueError):
    """A run folder that cannot be aggregated (missing or corrupt files)."""


@dataclass(frozen=True)
class IterationPoint:
    """One committed iteration of a run; ``cum_rollouts`` counts rollouts up to and including it."""

    iteration: int
    train_success: float
    cum_rollouts: int
    test_success: float | None = None
    problem_success: tuple[float, ...] = ()  # per training problem (the curve's clusters)
    flat_groups: int = 0
    groups: int = 0


@dataclass
class RunRecord:
    """One run folder, as the leaderboard sees it."""

    path: Path
    env: str
    method: str
    model: str
    seed: int
    iterations_completed: int
    test: CellResult | None
    reflection_calls: int
    reflector_tokens: int
    cost_usd: float  # reflector and API policy dollars (0 for local models)
    test_program_id: str | None
    best_prompt: str
    budget: Budget = field(default_factory=Budget)  # the run's ledger (espl_bench.running.runner.budget)
    cells: dict[str, CellResult] = field(default_factory=dict)  # the weights x prompt breakdown
    children: dict[str, int] = field(default_factory=dict)  # by source: revision, fallback, crossover
    # edits the admission rule refused, by reason; None: the run predates the rule (suite version 7)
    refused: dict[str, int] | None = None
    points: list[IterationPoint] = field(default_factory=list)
    provenance: Provenance | None = None  # code version and libraries (espl_bench.running.provenance); None if unrecorded
    gepa: GepaSelection | None = None  # a GEPA run's winning candidate; None: not GEPA, or not recorded

    @property
    def test_success(self) -> float | None:
        return None if self.test is None else self.test.success

    @property
    def pass_at(self) -> dict[str, float]:
        return {} if self.test is None else self.test.pass_at()

    @property
    def invalid_action_rate(self) -> float | None:
        return None if self.test is None else self.test.invalid_action_rate

    @property
    def rollouts(self) -> int:
        """Training rollouts (validation passes a method paid for included)."""
        return self.budget.training_rollouts + self.budget.validation_rollouts

    @property
    def generated_tokens(self) -> int:
        return sum(self.budget.generated_tokens.values())

    @property
    def code(self) -> str:
        """``espl-bench VERSION @ COMMIT`` (``+dirty`` with local changes), or "not recorded"."""
        return "not recorded" if self.provenance is None else self.provenance.describe()


@dataclass
class LeaderboardRow:
    """One (method, model) pair in an env, aggregated over its runs (seeds) on the board's problems."""

    env: str
    method: str
    model: str
    runs: list[RunRecord]
    success: stats.Interval | None
    pass_at: dict[str, float]
    invalid_action_rate: float | None
    per_run: dict[str, float]  # budget per run, averaged over seeds
    cells: dict[str, stats.Interval] = field(default_factory=dict)
    effects: dict[str, stats.Interval] = field(default_factory=dict)
    children: dict[str, float] = field(default_factory=dict)  # per run, by source
    refused: float | None = None  # edits the admission rule refused per run; None: a run predates the rule
    letters: str = ""  # compact letter display: rows that share a letter are not separated
    matrix: np.ndarray | None = None  # seeds x problems, the board's problems

    @property
    def success_mean(self) -> float | None:
        return None if self.success is None else self.success.estimate

    @property
    def n_seeds(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list[int]:
        return sorted(r.seed for r in self.runs)


@dataclass
class EnvBoard:
    """The leaderboard of one env: rows with letters, what it was measured on, what it could detect."""

    env: str
    rows: list[LeaderboardRow]
    measured_on: str = ""
    problems: int = 0
    pairs: list[PairComparison] = field(default_factory=list)
    alpha: float = stats.ALPHA  # familywise, over all pairs
    pair_alpha: float = stats.ALPHA  # the per-pair level at which detectable differences are stated

    @property
    def detectable(self) -> tuple[float, float] | None:
        """The smallest and largest detectable difference over pairs that do not share cells."""
        found = [p.detectable for p in self.pairs if p.detectable is not None and p.shared is None]
        return (min(found), max(found)) if found else None


@dataclass(frozen=True)
class SharedCells:
    """Runs of two methods whose test cells are the same cell: the same test-time program with the
    same weights kind and the same per-problem outcomes (by the protocol, base weights with one
    prompt give the same episodes in every run). Such runs cancel in the pair's difference."""

    a: int
    a_runs: int
    b: int
    b_runs: int

    def __str__(self) -> str:
        return f"identical programs in {self.a} of a's {self.a_runs} seeds and {self.b} of b's {self.b_runs}"


@dataclass(frozen=True)
class PairComparison:
    """Row ``a`` minus row ``b`` on the board's problems, paired on them: the unadjusted 95%
    interval, the Holm-adjusted p-value over all the board's pairs and whether it separates them,
    the smallest true difference the pair's data would detect at the board's per-pair level (80%
    power; None without variation), and the runs that share their cells."""

    a: str
    b: str
    difference: stats.Interval
    adjusted: float
    separated: bool
    detectable: float | None
    shared: SharedCells | None = None


@dataclass(frozen=True)
class TreeNode:
    """A program of the pool's evolutionary tree."""

    id: str
    parents: tuple[str, ...]
    origin: str
    iteration: int | None
    mu: float | None
    sigma: float | None
    text: str | None
    in_pool: bool


def find_run_dirs(roots: Iterable[str | Path]) -> list[Path]:
    """Every folder under ``roots`` that holds a run's summary or header."""
    found: set[Path] = set()
    for root in map(Path, roots):
        if not root.exists():
            log.warning("leaderboard: %s does not exist; skipped", root)
            continue
        found.update(find_runs([root]))
    return sorted(found)


def _points(history: list[IterationMetrics]) -> list[IterationPoint]:
    points, total = [], 0
    for m in history:
        total += m.rollouts
        points.append(IterationPoint(m.iteration, m.train_success, total, None if m.test is None else m.test.success,
                                     tuple(m.train_problem_success), m.flat_groups, m.groups))
    return points


def load_run(folder: str | Path) -> RunRecord:
    """Read one run folder through the typed records; raises :class:`RunLoadError` naming the folder."""
    folder = Path(folder)
    run = RunDir(folder)
    try:
        summary = run.summary()
        header = run.header()  # a folder without its header is not a run
        if not summary.finished:
            # A run still going (or stopped) would compare a partial budget with finished ones.
            raise RunLoadError(f"unfinished ({summary.iterations_completed} of {summary.iterations_planned} iterations); "
                               "resume it to include it")
        history = run.history()
    except (RunDirError, RecordError) as exc:
        raise RunLoadError(str(exc)) from None
    reflector = summary.reflector_usage
    return RunRecord(
        path=folder, env=env_label(summary.env, header.env_kwargs), method=summary.method, model=summary.model,
        seed=summary.seed, iterations_completed=summary.iterations_completed, test=summary.test,
        reflection_calls=sum(m.reflection_calls for m in history),
        reflector_tokens=reflector.tokens, cost_usd=summary.cost_usd,
        test_program_id=summary.test_program.id, best_prompt=summary.test_program.text, budget=summary.budget,
        cells=dict(summary.breakdown.cells) if summary.breakdown else {}, children=dict(summary.reflection.children),
        refused=summary.reflection.rejected_edits, points=_points(history), provenance=summary.provenance, gepa=summary.gepa)


def env_label(env: str, kwargs: dict | None) -> str:
    """An env as the board names it: its id, and its keyword arguments when a run set any (runs of
    one id with other arguments are other problems, on another board)."""
    return f"{env} {json.dumps(kwargs, sort_keys=True, separators=(',', ':'))}" if kwargs else env


def load_runs(roots: Iterable[str | Path]) -> list[RunRecord]:
    """All readable runs under ``roots``; each unreadable folder is logged as a warning and skipped."""
    runs = []
    for folder in find_run_dirs(roots):
        try:
            runs.append(load_run(folder))
        except RunLoadError as exc:
            log.warning("leaderboard: skipped run folder %s: %s", folder, exc)
    return runs


def _common_problems(runs: list[RunRecord]) -> list[str]:
    """Problem ids every run's test result holds, in the first run's order."""
    tests = [r.test for r in runs if r.test is not None]
    if not tests:
        return []
    shared = set.intersection(*(set(test.problem_ids) for test in tests))
    return [p for p in tests[0].problem_ids if p in shared]


def _matrix(cells: list[CellResult], problems: list[str]) -> np.ndarray:
    """(runs x problems) success rates on ``problems``."""
    rows = []
    for cell in cells:
        rate = dict(zip(cell.problem_ids, cell.per_problem))
        rows.append([rate[p] for p in problems])
    return np.array(rows, dtype=float)


BUDGET_KEYS = ("training rollouts", "evaluation rollouts", "generated tokens", "reflector calls", "reflector tokens",
               "seconds", "cost $")


def _per_run(run: RunRecord) -> dict[str, float]:
    seconds = run.budget.seconds
    return {"training rollouts": run.rollouts, "evaluation rollouts": run.budget.evaluation_rollouts,
            "generated tokens": run.generated_tokens, "reflector calls": run.reflection_calls,
            "reflector tokens": run.reflector_tokens, "seconds": round(seconds, 1), "cost $": run.cost_usd}


def _row(env: str, method: str, model: str, runs: list[RunRecord], problems: list[str]) -> LeaderboardRow:
    from espl_bench.scoring.breakdown import EFFECTS

    runs = sorted(runs, key=lambda r: (r.seed, str(r.path)))
    seeds = [r.seed for r in runs]
    if len(set(seeds)) < len(seeds):
        log.warning("leaderboard: %s %s %s has several runs with the same seed: %s", env, method, model,
                    ", ".join(str(r.path) for r in runs))
    tested = [r for r in runs if r.test is not None]
    matrix = _matrix([r.test for r in tested if r.test is not None], problems) if tested and problems else None
    keys = sorted({k for r in tested for k in r.pass_at}, key=lambda k: int(k[5:]) if k[5:].isdigit() else 0)
    names = set.intersection(*(set(r.cells) for r in runs)) if runs and all(r.cells for r in runs) else set()
    cells: dict[str, stats.Interval] = {}
    effects: dict[str, stats.Interval] = {}
    same_items = len({(r.cells[n].problem_ids if n in r.cells else ()) for r in runs for n in names}) == 1
    if names and same_items:
        ids = list(runs[0].cells[sorted(names)[0]].problem_ids)
        mats = {n: _matrix([r.cells[n] for r in runs], ids) for n in names}
        cells = {n: stats.interval(mats[n]) for n in sorted(names)}
        for name, terms in EFFECTS.items():
            needed = [f"{w}/{p}" for _, (w, p) in terms]
            if all(n in mats for n in needed):
                effects[name] = stats.contrast([(weight, mats[f"{w}/{p}"]) for weight, (w, p) in terms])
    budgets = [_per_run(r) for r in runs]
    return LeaderboardRow(
        env, method, model, runs, stats.interval(matrix) if matrix is not None else None,
        pass_at={k: statistics.fmean(r.pass_at[k] for r in tested if k in r.pass_at) for k in keys},
        invalid_action_rate=statistics.fmean(_known(r.invalid_action_rate) for r in tested) if tested else None,
        per_run={k: statistics.fmean(b[k] for b in budgets) for k in BUDGET_KEYS},
        cells=cells, effects=effects,
        children={k: statistics.fmean(r.children.get(k, 0) for r in runs) for k in ("revision", "fallback", "crossover")},
        refused=None if any(r.refused is None for r in runs) else statistics.fmean(sum(r.refused.values()) for r in runs
                                                                                  if r.refused is not None),
        matrix=matrix)


def aggregate(runs: Iterable[RunRecord]) -> list[EnvBoard]:
    """Boards sorted by env id; rows by mean success, with letters (see the module docstring)."""
    groups: dict[str, dict[tuple[str, str], list[RunRecord]]] = {}
    for run in runs:
        groups.setdefault(run.env, {}).setdefault((run.method, run.model), []).append(run)
    boards = []
    for env in sorted(groups):
        problems = _common_problems([r for rs in groups[env].values() for r in rs])
        rows = [_row(env, method, model, rs, problems) for (method, model), rs in groups[env].items()]
        rows.sort(key=lambda r: (r.success_mean is None, -(r.success_mean or 0.0), r.method, r.model))
        measured = [r.test for rs in groups[env].values() for r in rs if r.test is not None]
        seeds = sorted({r.seed for rs in groups[env].values() for r in rs})
        describe = (f"{measured[0].items.split} split, {len(problems)} problems x {measured[0].items.samples} samples, "
                    f"seeds {', '.join(map(str, seeds))}") if measured else ""
        board = EnvBoard(env, rows, describe, len(problems))
        _test_pairs(board, problems)
        boards.append(board)
    return boards


def _test_pairs(board: EnvBoard, problems: list[str]) -> None:
    """Every pair of scored rows tested (:func:`espl_bench.stats.tiers`); letters onto the rows."""
    scored = {_name(r, board.rows): r for r in board.rows if r.matrix is not None}
    if not scored:
        return
    found = stats.tiers({name: row.matrix for name, row in scored.items()})
    for name, row in scored.items():
        row.letters = found.letters[name]
    board.alpha, board.pair_alpha = found.alpha, found.pair_alpha
    board.pairs = [PairComparison(t.a, t.b, t.difference, t.adjusted, t.separated, t.detectable,
                                  shared_cells(scored[t.a].runs, scored[t.b].runs, problems)) for t in found.pairs]


def _cell_key(run: RunRecord, problems: list[str]) -> tuple | None:
    """What makes two runs' test cells the same cell (None without a test result)."""
    if run.test is None:
        return None
    outcomes = dict(zip(run.test.problem_ids, run.test.successes))
    return run.best_prompt, run.test.weights, tuple(outcomes[p] for p in problems)


def shared_cells(a: list[RunRecord], b: list[RunRecord], problems: list[str]) -> SharedCells | None:
    """The runs of ``a`` whose test cell is a cell of a run of ``b`` and the reverse (None: none)."""
    keys_a = [_cell_key(r, problems) for r in a]
    keys_b = [_cell_key(r, problems) for r in b]
    in_a = sum(k is not None and k in keys_b for k in keys_a)
    in_b = sum(k is not None and k in keys_a for k in keys_b)
    return SharedCells(in_a, len(a), in_b, len(b)) if in_a else None


def _name(row: LeaderboardRow, rows: list[LeaderboardRow]) -> str:
    return row.method if len({r.model for r in rows}) == 1 else f"{row.method} ({Path(row.model).name})"


def build_leaderboard(roots: Iterable[str | Path]) -> list[EnvBoard]:
    """:func:`load_runs` then :func:`aggregate`."""
    return aggregate(load_runs(roots))


@dataclass(frozen=True)
class Curve:
    """A row's learning curve: means over the runs that reached each iteration."""

    label: str
    iterations: list[int]
    train_success: list[float]
    cum_rollouts: list[float]
    test_iterations: list[int]
    test_success: list[float]
    test_cum_rollouts: list[float]
    train_low: list[float] = field(default_factory=list)  # 95% interval over (seed, problem) clusters
    train_high: list[float] = field(default_factory=list)


CURVE_EDGE = 3  # iterations at each end of a learning curve that its change compares


def curve_change(row: LeaderboardRow, edge: int = CURVE_EDGE) -> stats.Interval | None:
    """Training success of the row's last ``edge`` iterations minus its first ``edge`` (at most half
    of them each; clusters: one (seed, problem) per training problem, all seeds pooled); None when
    the runs have fewer than two iterations or recorded no per-problem successes."""
    by_t: dict[int, list[float]] = {}
    for run in row.runs:
        for p in run.points:
            by_t.setdefault(p.iteration, []).extend(p.problem_success)
    ts = sorted(t for t in by_t if by_t[t])
    edge = min(edge, len(ts) // 2)
    if edge < 1:
        return None
    first = [x for t in ts[:edge] for x in by_t[t]]
    last = [x for t in ts[-edge:] for x in by_t[t]]
    return stats.change(first, last)


def row_curve(row: LeaderboardRow, label: str | None = None) -> Curve:
    """Mean train and test success per iteration over the row's seeds, with mean cumulative rollouts."""
    by_t: dict[int, list[IterationPoint]] = {}
    for run in row.runs:
        for p in run.points:
            by_t.setdefault(p.iteration, []).append(p)
    ts = sorted(by_t)
    tested = [(t, [p for p in by_t[t] if p.test_success is not None]) for t in ts]
    tested = [(t, ps) for t, ps in tested if ps]
    bands = []
    for t in ts:
        clusters = [x for p in by_t[t] for x in p.problem_success]
        band = stats.interval(clusters) if clusters else None
        bands.append((band.low, band.high) if band else (float("nan"), float("nan")))
    return Curve(label or row.method, ts,
                 [statistics.fmean(p.train_success for p in by_t[t]) for t in ts],
                 [statistics.fmean(p.cum_rollouts for p in by_t[t]) for t in ts],
                 [t for t, _ in tested], [statistics.fmean(_known(p.test_success) for p in ps) for _, ps in tested],
                 [statistics.fmean(p.cum_rollouts for p in ps) for _, ps in tested],
                 [b[0] for b in bands], [b[1] for b in bands])


def load_tree(run: RunRecord) -> list[TreeNode]:
    """The evolutionary tree from the run's latest ``pool.json`` ([] when there is none)."""
    try:
        record = RunDir(run.path).last_pool()
        if record is None:
            return []
        pool = Pool.from_record(record)
        programs = {p.id: p for p in pool.programs}
        lineage = {**{pid: list(p.parents) for pid, p in programs.items()}, **pool.lineage}
        nodes = []
        for pid, parents in lineage.items():
            program = programs.get(pid)
            if program is None:
                nodes.append(TreeNode(pid, tuple(parents), "evicted", None, None, None, None, False))
                continue
            nodes.append(TreeNode(pid, tuple(parents), program.origin, program.iteration, program.mu,
                                  program.sigma, program.render(), True))
        return nodes
    except (RunDirError, RecordError, KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("leaderboard: no evolutionary tree for %s: %s", run.path, exc)
        return []


def ancestors(nodes: list[TreeNode], program_id: str) -> list[TreeNode]:
    """``program_id`` then its ancestors, nearest first (breadth-first over all parents)."""
    index = {n.id: n for n in nodes}
    order, queue, seen = [], [program_id], {program_id}
    while queue:
        node = index.get(queue.pop(0))
        if node is None:
            continue
        order.append(node)
        for parent in node.parents:
            if parent not in seen:
                seen.add(parent)
                queue.append(parent)
    return order


def _known(value: float | None) -> float:
    """A value the caller's filter already knows is there (a tested run's rate, a tested point's success)."""
    assert value is not None
    return value
