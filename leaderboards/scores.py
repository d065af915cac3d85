"""Score regression for ``espl-bench bench compare``: current results against a stored baseline.

Both files are JSON lists of ``{"suite_id": {env, method, model, seed, budget}, "success": p,
"n": samples}`` (``suite_id`` may also be a 5-element list in that order). For every baseline
entry the current success rate may fall by at most

    tolerance = max(floor, z * sqrt(se_base**2 + se_cur**2)),   se = sqrt(p * (1 - p) / n)

(binomial standard errors; ``z`` defaults to 2, ``floor`` to 0.02). A larger drop is a
regression; a rise by more than the tolerance is reported as an improvement. A baseline entry
without a current result is ``missing`` (a failure unless ``allow_missing``); current entries
without a baseline are ``new`` (never a failure).

Contract: :func:`load_scores` raises :class:`ScoreFileError` (a ``ValueError``) naming the file
and the entry for unreadable JSON, bad fields, or duplicate suite ids; :func:`compare` never
raises on data it got from :func:`load_scores`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from leaderboards.suite import SuiteId

log = logging.getLogger(__name__)

Status = Literal["ok", "improved", "regressed", "missing", "new"]


class ScoreFileError(ValueError):
    """A results or baseline file that cannot be used."""


@dataclass(frozen=True)
class ScoreRecord:
    """One suite configuration's test success rate over ``n`` evaluated samples."""

    suite_id: SuiteId
    success: float
    n: int

    @property
    def se(self) -> float:
        """Binomial standard error sqrt(p (1 - p) / n)."""
        return math.sqrt(self.success * (1.0 - self.success) / self.n)

    def to_dict(self) -> dict:
        return {"suite_id": self.suite_id.to_dict(), "success": self.success, "n": self.n}

    @classmethod
    def from_summary(cls, suite_id: SuiteId, summary: dict) -> ScoreRecord:
        """From a run's ``summary.json``: n = test problems x samples per problem."""
        test = summary.get("test") or {}
        if "success" not in test:
            raise ValueError(f"{suite_id.label()}: the run has no test evaluation")
        return cls(suite_id, float(test["success"]), int(test["problems"]) * int(test["samples"]))


@dataclass(frozen=True)
class Comparison:
    """One suite id: baseline and current score, the allowed drop, and the verdict."""

    suite_id: SuiteId
    baseline: ScoreRecord | None
    current: ScoreRecord | None
    tolerance: float | None
    status: Status

    @property
    def delta(self) -> float | None:
        if self.baseline is None or self.current is None:
            return None
        return self.current.success - self.baseline.success


@dataclass(frozen=True)
class ScoreReport:
    """All comparisons, in baseline order then new entries; ``passed`` is the verdict."""

    comparisons: tuple[Comparison, ...]
    z: float
    floor: float
    allow_missing: bool

    @property
    def failures(self) -> tuple[Comparison, ...]:
        bad = {"regressed"} | (set() if self.allow_missing else {"missing"})
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
        if not isinstance(entry, dict) or not {"suite_id", "success", "n"} <= entry.keys():
            raise ScoreFileError(f"{where}: needs suite_id, success and n")
        try:
            suite_id = SuiteId.from_obj(entry["suite_id"])
        except ValueError as exc:
            raise ScoreFileError(f"{where}: {exc}") from None
        success, n = entry["success"], entry["n"]
        if isinstance(success, bool) or not isinstance(success, (int, float)) or not 0.0 <= success <= 1.0:
            raise ScoreFileError(f"{where}: success must be a number in [0, 1], got {success!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ScoreFileError(f"{where}: n must be a positive integer, got {n!r}")
        if suite_id in seen:
            raise ScoreFileError(f"{where}: duplicate suite_id {suite_id.label()}")
        seen.add(suite_id)
        records.append(ScoreRecord(suite_id, float(success), n))
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


def tolerance(baseline: ScoreRecord, current: ScoreRecord, *, z: float = 2.0, floor: float = 0.02) -> float:
    """The largest drop in success that counts as noise."""
    return max(floor, z * math.sqrt(baseline.se ** 2 + current.se ** 2))


def compare(current: list[ScoreRecord], baseline: list[ScoreRecord], *, z: float = 2.0, floor: float = 0.02,
            allow_missing: bool = False) -> ScoreReport:
    """Compare ``current`` against ``baseline`` record by record (matched on suite id)."""
    if z < 0 or floor < 0:
        raise ValueError("z and floor must be non-negative")
    now = {r.suite_id: r for r in current}
    rows: list[Comparison] = []
    for base in baseline:
        cur = now.pop(base.suite_id, None)
        if cur is None:
            rows.append(Comparison(base.suite_id, base, None, None, "missing"))
            continue
        tol = tolerance(base, cur, z=z, floor=floor)
        drop = base.success - cur.success
        status: Status = "regressed" if drop > tol else "improved" if -drop > tol else "ok"
        rows.append(Comparison(base.suite_id, base, cur, tol, status))
    rows.extend(Comparison(c.suite_id, None, c, None, "new") for c in now.values())
    report = ScoreReport(tuple(rows), z, floor, allow_missing)
    for c in report.failures:
        log.warning("score regression: %s is %s", c.suite_id.label(), c.status)
    return report


def compare_files(current_path: str | Path, baseline_path: str | Path, *, z: float = 2.0, floor: float = 0.02,
                  allow_missing: bool = False) -> ScoreReport:
    """:func:`compare` on two files; raises :class:`ScoreFileError` for a bad file."""
    return compare(load_scores(current_path), load_scores(baseline_path), z=z, floor=floor,
                   allow_missing=allow_missing)


def _fmt(record: ScoreRecord | None) -> str:
    return "-" if record is None else f"{record.success:.3f} (n={record.n})"


def render_table(report: ScoreReport) -> str:
    """A fixed-width text table, one line per comparison, then a verdict line."""
    header = ("env", "method", "model", "seed", "budget", "baseline", "current", "delta", "tolerance", "status")
    lines = [header]
    for c in report.comparisons:
        s = c.suite_id
        lines.append((s.env, s.method, s.model, str(s.seed), s.budget, _fmt(c.baseline), _fmt(c.current),
                      "-" if c.delta is None else f"{c.delta:+.3f}",
                      "-" if c.tolerance is None else f"{c.tolerance:.3f}",
                      c.status.upper() if c in report.failures else c.status))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    n_fail = len(report.failures)
    verdict = "PASS" if report.passed else f"FAIL ({n_fail} of {len(report.comparisons)})"
    text.append(f"{verdict}: z={report.z:g}, floor={report.floor:g}, tolerance = max(floor, z*sqrt(se_base^2+se_cur^2))")
    return "\n".join(text) + "\n"
