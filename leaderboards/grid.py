"""One run of a grid, where it runs: :func:`execute` on a :class:`RunSpec` gives a :class:`RunOutcome`.

``bench``'s executors (:mod:`espl_bench.leaderboards.executors`) call :func:`execute` in the bench
process (``local``) or in a Ray worker on any node (``ray``); either way the run itself is a child
process (``python -m espl_bench run``: its memory returns to the OS when it ends, a crash stays
inside it) whose output goes to the spec's log file. The outcome carries what the driver needs
from the node's disk (the summary and the compact records for ``--keep``), so run folders may live
on each node's own disk.

Contract: :func:`execute` never raises for a run that fails; the outcome's ``code`` is the child's
exit status (2: the run refused its input or its folder, one line in ``reason``; negative: killed
by that signal; :data:`REFUSED`: the node or the folder belongs to another identity) and
``reason`` one line saying why.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from espl_bench.config import RunConfig
from espl_bench.leaderboards.identity import (
    SuiteIdentity,
    node_identity,
    write_identity,
)
from espl_bench.rundir import SUMMARY, RunDir

_MARK = "=== espl-bench run"
REFUSED = 3  # the run was not started: its node or folder has another identity (not retried)


@dataclass(frozen=True)
class RunSpec:
    """A run to make: its name, folder, ``espl-bench run`` arguments (without ``--resume``), the
    config they make, what its identity is made of, the identity the grid expects of it (once
    probed), and the resources it asks for."""

    name: str
    folder: str  # absolute: the same path on every node (a shared filesystem, or each node's disk)
    argv: tuple[str, ...]
    config: RunConfig
    suite_version: str
    settings: dict
    log: str  # absolute path of the run's output (appended on every attempt)
    cpus: float = 1.0
    gpus: float = 0.0
    identity: SuiteIdentity | None = None

    def here(self) -> SuiteIdentity:
        """The identity this run gets on this machine."""
        return node_identity(self.config, self.suite_version, self.settings)


@dataclass(frozen=True)
class RunOutcome:
    """What came of one attempt (see the module docstring)."""

    code: int
    reason: str = ""
    summary: str | None = None  # summary.json's text, when the run finished
    records: dict[str, str] = field(default_factory=dict)  # the compact copy: relative path -> text
    resumed: bool = False

    @property
    def finished(self) -> bool:
        return self.code == 0 and self.summary is not None


def execute(spec: RunSpec) -> RunOutcome:
    """Make (or resume) the run of ``spec`` here; see the module docstring."""
    folder = Path(spec.folder)
    here = spec.here()
    if spec.identity is not None and here != spec.identity:
        return RunOutcome(REFUSED, f"this node runs it as {here.describe()}, the grid is {spec.identity.describe()} "
                          f"({'; '.join(here.differences(spec.identity))}); fix: give its runs nodes like the others")
    if RunDir(folder).identity_path.is_file():
        from espl_bench.leaderboards.identity import read_identity

        started = read_identity(folder)
        if started != here:
            return RunOutcome(REFUSED, f"{folder} was started as {started.describe()} "
                              f"({'; '.join(started.differences(here))}); fix: delete it, or use another --out")
    resume = RunDir(folder).has_run()
    write_identity(folder, here)
    code = _child(spec, resume)
    if code != 0:
        return RunOutcome(code, _reason(Path(spec.log), code), resumed=resume)
    records = compact_files(folder)
    return RunOutcome(0, summary=records.get(SUMMARY), records=records, resumed=resume)


def _child(spec: RunSpec, resume: bool) -> int:
    Path(spec.log).parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "espl_bench", "run", *spec.argv, *(["--resume"] if resume else [])]
    with open(spec.log, "a", encoding="utf-8") as log:
        log.write(f"\n{_MARK}{' --resume' if resume else ''} (from pid {os.getpid()})\n")
        log.flush()
        return subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode


def _reason(log: Path, code: int) -> str:
    """One line: the run's own error line, else the last line of its traceback, else its exit."""
    if code < 0:
        return f"killed by signal {-code}"
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    attempt = text.rsplit(_MARK, 1)[-1]  # this attempt's output only
    lines = [line.strip() for line in attempt.replace("\r", "\n").splitlines() if line.strip()]
    for line in reversed(lines):
        if " ERROR " in line:
            return line.split(": ", 1)[-1]
    tail = next((line for line in reversed(lines) if not line.startswith(("File ", "^", "~"))), "")
    return f"exit {code}: {tail}" if tail else f"exit {code}"


def compact_files(folder: Path) -> dict[str, str]:
    """What the board needs from a finished run (:meth:`espl_bench.rundir.RunDir.compact_files`):
    its records and its last iteration's pool, as relative path -> text."""
    return RunDir(folder).compact_files()


def write_compact(files: dict[str, str], dest: Path) -> None:
    """``dest`` replaced whole by ``files`` (written beside it, then renamed into place)."""
    import shutil
    import tempfile

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".keep-", dir=dest.parent))
    try:
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text, encoding="utf-8")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
