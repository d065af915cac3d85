"""Score regression for ``espl-bench bench compare``: current results against a stored baseline.

Both files are JSON lists of ``{"suite_id": {env, method, model, seed, budget}, "success": p,
"split": "test", "problems": [ids], "outcomes": [[0/1 per sample] per problem]}`` (``suite_id``
may also be a 5-element list in that order): each entry keeps its per-problem outcomes, because
samples of one problem are not independent. For every baseline entry, the current run is
compared on the problems both hold, paired on them, with the statistics of the board
(:func:`espl_bench.stats.difference`; one run on each side: the paired t interval over problems,
exact bounds when nothing varies). Each entry is one comparison at ``level``; the board's
adjustment over pairs of methods does not apply (a baseline is one configuration, not a field):

* ``regressed``: the 95% interval of current - baseline lies below 0 and the drop exceeds
  ``floor`` (default 0.02): a real drop, not noise;
* ``improved``: the mirror image; ``ok`` otherwise (noise, or a change too small to matter).

A baseline entry without a current result is ``missing`` and one with no problem in common is
``incomparable`` (failures unless ``allow_missing``); current entries without a baseline are
``new`` (never a failure).

Contract: :func:`load_scores` raises :class:`ScoreFileError` (a ``ValueError``) naming the file
and the entry for unreadable JSON, bad fields, entries without per-problem outcomes (written by
an older version: regenerate them), or duplicate suite ids; :func:`compare` never raises on data
it got from :func:`load_scores`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from espl_bench import stats
from espl_bench.leaderboards.suite import SuiteId
from espl_bench.records import RunSummary

log = logging.getLogger(__name__)

Status = Literal["ok", "improved", "regressed", "missing", "incomparable", "new"]


class ScoreFileError(ValueError):
    """A results or baseline file that cannot be used."""


@dataclass(frozen=True)
class ScoreRecord:
    """One suite configuration's test outcomes, per problem."""

    suite_id: SuiteId
    problems: tuple[str, ...]
    outcomes: tuple[tuple[int, ...], ...]
    split: str = "test"

    @property
    def n(self) -> int:
        return sum(len(row) for row in self.outcomes)

    @property
    def success(self) -> float:
        return sum(map(sum, self.outcomes)) / self.n if self.n else 0.0

    def rates(self) -> dict[str, float]:
        return {p: sum(row) / len(row) for p, row in zip(self.problems, self.outcomes)}

    def to_dict(self) -> dict:
        return {"suite_id": self.suite_id.to_dict(), "success": self.success, "split": self.split, "n": self.n,
                "problems": list(self.problems), "outcomes": [list(r) for r in self.outcomes]}

    @classmethod
    def from_summary(cls, suite_id: SuiteId, summary: RunSummary) -> ScoreRecord:
        """From a run's summary (its final test evaluation)."""
        if summary.test is None:
            raise ValueError(f"{suite_id.label()}: the run has no test evaluation")
        cell = summary.test
        return cls(suite_id, cell.problem_ids, cell.successes, cell.items.split)


@dataclass(frozen=True)
class Comparison:
    """One suite id: baseline and current score, the paired difference, and the verdict."""

    suite_id: SuiteId
    baseline: ScoreRecord | None
    current: ScoreRecord | None
    difference: stats.Interval | None
    status: Status
    shared: int = 0  # problems compared

    @property
    def delta(self) -> float | None:
        return None if self.difference is None else self.difference.estimate


@dataclass(frozen=True)
class ScoreReport:
    """All comparisons, in baseline order then new entries; ``passed`` is the verdict."""

    comparisons: tuple[Comparison, ...]
    floor: float
    allow_missing: bool
    level: float = stats.LEVEL

    @property
    def failures(self) -> tuple[Comparison, ...]:
        bad = {"regressed"} | (set() if self.allow_missing else {"missing", "incomparable"})
        return tuple(c for c in self.comparisons if c.status in bad)

    @property
    def passed(self) -> bool:
        return not self.failures


def parse_scores(data: object, source: str = "<data>") -> list[ScoreRecord]:
    """Validate the JSON form (a list of entries) into records; see the module docstring."""
    if not isinstance(data, list):
        raise ScoreFileError(f"{source}: expected a JSON list of score entries")
    records: list[ScoreRecord] = []
    seen: set[SuiteId] = set()
    for i, entry in enumerate(data):
        where = f"{source}: entry {i}"
        if not isinstance(entry, dict) or "suite_id" not in entry:
            raise ScoreFileError(f"{where}: needs suite_id, problems and outcomes")
        if "outcomes" not in entry or "problems" not in entry:
            raise ScoreFileError(f"{where}: has no per-problem outcomes (written by an older espl-bench); "
                                 "fix: regenerate it with espl-bench bench")
        try:
            suite_id = SuiteId.from_obj(entry["suite_id"])
        except ValueError as exc:
            raise ScoreFileError(f"{where}: {exc}") from None
        problems, outcomes = entry["problems"], entry["outcomes"]
        if not (isinstance(problems, list) and isinstance(outcomes, list) and len(problems) == len(outcomes) > 0
                and all(isinstance(p, str) for p in problems)
                and all(isinstance(row, list) and row and all(x in (0, 1) and not isinstance(x, float) for x in row)
                        for row in outcomes)):
            raise ScoreFileError(f"{where}: problems must be ids and outcomes a non-empty list of 0/1 lists, one per problem")
        if suite_id in seen:
            raise ScoreFileError(f"{where}: duplicate suite_id {suite_id.label()}")
        seen.add(suite_id)
        records.append(ScoreRecord(suite_id, tuple(problems), tuple(tuple(int(x) for x in r) for r in outcomes),
                                   str(entry.get("split", "test"))))
    return records


def load_scores(path: str | Path) -> list[ScoreRecord]:
    """Read and validate a results or baseline file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScoreFileError(f"{path}: cannot read scores ({exc})") from None
    return parse_scores(data, str(path))


def dump_scores(records: list[ScoreRecord], path: str | Path) -> None:
    """Write records in the file format :func:`load_scores` reads."""
    Path(path).write_text(json.dumps([r.to_dict() for r in records], indent=1) + "\n", encoding="utf-8")


def compare(current: list[ScoreRecord], baseline: list[ScoreRecord], *, floor: float = 0.02,
            allow_missing: bool = False, level: float = stats.LEVEL) -> ScoreReport:
    """Compare ``current`` against ``baseline`` record by record (matched on suite id)."""
    if floor < 0 or not 0 < level < 1:
        raise ValueError("floor must be non-negative and level in (0, 1)")
    now = {r.suite_id: r for r in current}
    rows: list[Comparison] = []
    for base in baseline:
        cur = now.pop(base.suite_id, None)
        if cur is None:
            rows.append(Comparison(base.suite_id, base, None, None, "missing"))
            continue
        old, new = base.rates(), cur.rates()
        shared = [p for p in base.problems if p in new]
        if not shared or base.split != cur.split:
            rows.append(Comparison(base.suite_id, base, cur, None, "incomparable"))
            continue
        diff = stats.difference([[new[p] for p in shared]], [[old[p] for p in shared]], level)
        status: Status = ("regressed" if diff.high < 0 and -diff.estimate > floor
                          else "improved" if diff.low > 0 and diff.estimate > floor else "ok")
        rows.append(Comparison(base.suite_id, base, cur, diff, status, len(shared)))
    rows.extend(Comparison(c.suite_id, None, c, None, "new") for c in now.values())
    report = ScoreReport(tuple(rows), floor, allow_missing, level)
    for c in report.failures:
        log.warning("score regression: %s is %s", c.suite_id.label(), c.status)
    return report


def compare_files(current_path: str | Path, baseline_path: str | Path, *, floor: float = 0.02,
                  allow_missing: bool = False, level: float = stats.LEVEL) -> ScoreReport:
    """:func:`compare` on two files; raises :class:`ScoreFileError` for a bad file."""
    return compare(load_scores(current_path), load_scores(baseline_path), floor=floor, allow_missing=allow_missing,
                   level=level)


def _fmt(record: ScoreRecord | None) -> str:
    return "-" if record is None else f"{record.success:.3f} ({len(record.problems)}x{record.n // max(1, len(record.problems))})"


def render_table(report: ScoreReport) -> str:
    """A fixed-width text table, one line per comparison, then a verdict line."""
    header = ("env", "method", "model", "seed", "budget", "baseline", "current", "delta [95% CI]", "problems", "status")
    lines = [header]
    for c in report.comparisons:
        s = c.suite_id
        diff = "-" if c.difference is None else _interval(c.difference)
        lines.append((s.env, s.method, s.model, str(s.seed), s.budget, _fmt(c.baseline), _fmt(c.current), diff,
                      str(c.shared) if c.difference is not None else "-",
                      c.status.upper() if c in report.failures else c.status))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    n_fail = len(report.failures)
    verdict = "PASS" if report.passed else f"FAIL ({n_fail} of {len(report.comparisons)})"
    text.append(f"{verdict}: paired on shared problems; regressed = the {report.level:.0%} interval of the change "
                f"is below 0 and the drop exceeds {report.floor:g}")
    return "\n".join(text) + "\n"


def _interval(i: stats.Interval) -> str:
    return f"{i.estimate:+.3f} [{i.low:+.3f}, {i.high:+.3f}]"
