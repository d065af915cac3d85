"""Aggregation of run folders into leaderboards: one board per env, one row per (method, model).

Contract:

* :func:`find_run_dirs` returns, sorted, every folder under the roots holding ``summary.json``
  or ``run.json`` (a root may itself be a run folder).
* :func:`load_run` reads one folder into a :class:`RunRecord` or raises :class:`RunLoadError`:
  ``summary.json`` and ``run.json`` (the seed is ``config.seed``) are required; the
  per-iteration metrics come from ``metrics.jsonl``, else ``iterations/N/metrics.json``, in
  both cases only up to the commit marker ``LATEST`` (uncommitted leftovers are ignored).
* :func:`load_runs` logs a warning naming each folder it cannot read and skips it.
* :func:`aggregate` groups runs by env, then (method, model): test success is the mean over
  seeds with standard error ``stdev / sqrt(n)`` (sample stdev; ``None`` for one seed); pass@k
  and invalid-action rate are means; rollouts, generated tokens and reflector calls are totals
  over the row's runs. Rows are sorted by mean success, best first (no test result last).
* :func:`load_tree` reads a run's latest ``pool.json`` into :class:`TreeNode` s, evicted
  ancestors (known from ``lineage`` only) included with ``in_pool=False``.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from espl.program import Program

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


@dataclass
class RunRecord:
    """One run folder, as the leaderboard sees it."""

    path: Path
    env: str
    method: str
    model: str
    seed: int
    iterations_completed: int
    test_success: float | None
    pass_at: dict[str, float]
    invalid_action_rate: float | None
    rollouts: int
    generated_tokens: int
    reflection_calls: int
    reflector_tokens: int
    cost_usd: float  # reflector and API policy dollars (0 for local models)
    test_program_id: str | None
    best_prompt: str
    points: list[IterationPoint] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)  # code version and libraries (espl.provenance); {} if unrecorded

    @property
    def code(self) -> str:
        """``espl-bench VERSION @ COMMIT`` (``+dirty`` with local changes), or "not recorded"."""
        if not self.provenance:
            return "not recorded"
        git = self.provenance.get("git") or {}
        at = f" @ {git['commit'][:10]}{'+dirty' if git.get('dirty') else ''}" if git.get("commit") else ""
        return f"espl-bench {self.provenance.get('espl_bench') or '?'}{at}"


@dataclass
class LeaderboardRow:
    """One (method, model) pair in an env, aggregated over its runs (seeds)."""

    env: str
    method: str
    model: str
    runs: list[RunRecord]
    success_mean: float | None
    success_se: float | None
    pass_at: dict[str, float]
    invalid_action_rate: float | None
    rollouts: int
    generated_tokens: int
    reflection_calls: int
    reflector_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def n_seeds(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list[int]:
        return sorted(r.seed for r in self.runs)


@dataclass
class EnvBoard:
    """The leaderboard of one env."""

    env: str
    rows: list[LeaderboardRow]


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


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunLoadError(f"{path.parent}: {path.name} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunLoadError(f"{path.parent}: {path.name} is corrupt ({exc})") from None


def find_run_dirs(roots: Iterable[str | Path]) -> list[Path]:
    """Every folder under ``roots`` that holds ``summary.json`` or ``run.json``."""
    found: set[Path] = set()
    for root in map(Path, roots):
        if not root.exists():
            log.warning("leaderboard: %s does not exist; skipped", root)
            continue
        for name in ("summary.json", "run.json"):
            found.update(p.parent for p in root.rglob(name) if p.is_file())
    return sorted(found)


def _latest(folder: Path) -> int | None:
    """The commit marker ``LATEST`` (``None`` when absent or unreadable)."""
    text = (folder / "LATEST").read_text().strip() if (folder / "LATEST").is_file() else ""
    return int(text) if text.isdigit() else None


def _iteration_dirs(folder: Path) -> list[Path]:
    """Committed iteration folders, oldest first (numeric names up to ``LATEST``; leftovers ignored)."""
    dirs = sorted((p for p in folder.glob("iterations/*") if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    latest = _latest(folder)
    return dirs if latest is None else [p for p in dirs if int(p.name) <= latest]


def _metrics(folder: Path) -> list[dict]:
    """Per-iteration metrics up to ``LATEST`` (a kill inside a commit can leave metrics.jsonl one ahead)."""
    path = folder / "metrics.jsonl"
    if not path.exists():
        return [_read_json(p / "metrics.json") for p in _iteration_dirs(folder)]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunLoadError(f"{folder}: metrics.jsonl is corrupt ({exc})") from None
    latest = _latest(folder)
    return rows if latest is None else [m for m in rows if int(m["iteration"]) <= latest]


def _points(history: list[dict]) -> list[IterationPoint]:
    points, total = [], 0
    for m in history:
        total += int(m.get("rollouts", 0))
        test = m.get("test") or {}
        points.append(IterationPoint(int(m["iteration"]), float(m.get("train_success", 0.0)), total,
                                     float(test["success"]) if "success" in test else None))
    return points


def load_run(folder: str | Path) -> RunRecord:
    """Read one run folder; raises :class:`RunLoadError` naming the folder."""
    folder = Path(folder)
    summary, header = _read_json(folder / "summary.json"), _read_json(folder / "run.json")
    try:
        seed = int(header["config"]["seed"])
        done, planned = summary.get("iterations_completed"), summary.get("iterations_planned")
        if isinstance(done, int) and isinstance(planned, int) and done < planned:
            # A run still going (or stopped) would compare a partial budget with finished ones.
            raise RunLoadError(f"unfinished ({done} of {planned} iterations); resume it to include it")
        history = _metrics(folder)
        test = summary.get("test") or {}
        usage = summary.get("usage") or {}
        program = summary.get("test_program") or {}
        prompt = program.get("text")
        if prompt is None and (folder / "best_prompt.txt").exists():
            prompt = (folder / "best_prompt.txt").read_text(encoding="utf-8")
        return RunRecord(
            path=folder, env=str(summary["env"]), method=str(summary["method"]), model=str(summary["model"]),
            seed=seed, iterations_completed=int(summary.get("iterations_completed", len(history))),
            test_success=float(test["success"]) if "success" in test else None,
            pass_at={k: float(v) for k, v in test.items() if k.startswith("pass@")},
            invalid_action_rate=float(test["invalid_action_rate"]) if "invalid_action_rate" in test else None,
            rollouts=int(summary.get("rollouts", sum(m.get("rollouts", 0) for m in history))),
            generated_tokens=int(summary.get("generated_tokens", sum(m.get("generated_tokens", 0) for m in history))),
            reflection_calls=sum(int(m.get("reflection_calls", 0)) for m in history),
            reflector_tokens=int(usage.get("reflector", {}).get("prompt_tokens", 0))
            + int(usage.get("reflector", {}).get("completion_tokens", 0)),
            cost_usd=sum(float(u.get("cost_usd", 0.0)) for u in usage.values()),
            test_program_id=program.get("id"), best_prompt=prompt or "", points=_points(history),
            provenance=dict(summary.get("provenance") or {}))
    except RunLoadError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RunLoadError(f"{folder}: unexpected contents ({type(exc).__name__}: {exc})") from None


def load_runs(roots: Iterable[str | Path]) -> list[RunRecord]:
    """All readable runs under ``roots``; each unreadable folder is logged as a warning and skipped."""
    runs = []
    for folder in find_run_dirs(roots):
        try:
            runs.append(load_run(folder))
        except RunLoadError as exc:
            log.warning("leaderboard: skipped run folder %s: %s", folder, exc)
    return runs


def mean_se(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and standard error of the mean (sample stdev / sqrt(n); ``None`` below two values)."""
    if not values:
        return None, None
    if len(values) < 2:
        return values[0], None
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def _row(env: str, method: str, model: str, runs: list[RunRecord]) -> LeaderboardRow:
    runs = sorted(runs, key=lambda r: (r.seed, str(r.path)))
    seeds = [r.seed for r in runs]
    if len(set(seeds)) < len(seeds):
        log.warning("leaderboard: %s %s %s has several runs with the same seed: %s", env, method, model,
                    ", ".join(str(r.path) for r in runs))
    mean, se = mean_se([r.test_success for r in runs if r.test_success is not None])
    keys = sorted({k for r in runs for k in r.pass_at}, key=lambda k: int(k[5:]) if k[5:].isdigit() else 0)
    return LeaderboardRow(
        env, method, model, runs, mean, se,
        pass_at={k: statistics.fmean(r.pass_at[k] for r in runs if k in r.pass_at) for k in keys},
        invalid_action_rate=mean_se([r.invalid_action_rate for r in runs if r.invalid_action_rate is not None])[0],
        rollouts=sum(r.rollouts for r in runs), generated_tokens=sum(r.generated_tokens for r in runs),
        reflection_calls=sum(r.reflection_calls for r in runs),
        reflector_tokens=sum(r.reflector_tokens for r in runs), cost_usd=sum(r.cost_usd for r in runs))


def aggregate(runs: Iterable[RunRecord]) -> list[EnvBoard]:
    """Boards sorted by env id; rows sorted by mean test success, best first."""
    groups: dict[str, dict[tuple[str, str], list[RunRecord]]] = {}
    for run in runs:
        groups.setdefault(run.env, {}).setdefault((run.method, run.model), []).append(run)
    boards = []
    for env in sorted(groups):
        rows = [_row(env, method, model, rs) for (method, model), rs in groups[env].items()]
        rows.sort(key=lambda r: (r.success_mean is None, -(r.success_mean or 0.0), r.method, r.model))
        boards.append(EnvBoard(env, rows))
    return boards


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


def row_curve(row: LeaderboardRow, label: str | None = None) -> Curve:
    """Mean train and test success per iteration over the row's seeds, with mean cumulative rollouts."""
    by_t: dict[int, list[IterationPoint]] = {}
    for run in row.runs:
        for p in run.points:
            by_t.setdefault(p.iteration, []).append(p)
    ts = sorted(by_t)
    tested = [(t, [p for p in by_t[t] if p.test_success is not None]) for t in ts]
    tested = [(t, ps) for t, ps in tested if ps]
    return Curve(label or row.method, ts,
                 [statistics.fmean(p.train_success for p in by_t[t]) for t in ts],
                 [statistics.fmean(p.cum_rollouts for p in by_t[t]) for t in ts],
                 [t for t, _ in tested], [statistics.fmean(p.test_success for p in ps) for _, ps in tested],
                 [statistics.fmean(p.cum_rollouts for p in ps) for _, ps in tested])


def load_tree(run: RunRecord) -> list[TreeNode]:
    """The evolutionary tree from the run's latest ``pool.json`` ([] when there is none)."""
    pools = [p / "pool.json" for p in _iteration_dirs(run.path) if (p / "pool.json").is_file()]
    if not pools:
        return []
    try:
        data = _read_json(pools[-1])
        programs = {p["id"]: p for p in data["programs"]}
        lineage: dict[str, list[str]] = {k: list(v) for k, v in data.get("lineage", {}).items()}
        for pid, p in programs.items():
            lineage.setdefault(pid, list(p.get("parents", [])))
        nodes = []
        for pid, parents in lineage.items():
            p = programs.get(pid)
            if p is None:
                nodes.append(TreeNode(pid, tuple(parents), "evicted", None, None, None, None, False))
                continue
            program = Program.from_dict(p)
            nodes.append(TreeNode(pid, tuple(parents), program.origin, program.iteration, program.mu,
                                  program.sigma, program.render(), True))
        return nodes
    except (RunLoadError, KeyError, TypeError, AttributeError) as exc:
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
