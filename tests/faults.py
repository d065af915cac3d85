"""A test hook that kills, fails or pauses the process at a named point, to prove resume works from anywhere.

The package announces its points with ``sys.audit("espl_bench.point", iteration, point)``: a
phase of the loop (``rollouts``, ``learn + reflect``, ``learn (after reflection)``, ``eval``) or
``commit`` (inside the commit, after the iteration folder is in place and before the ``LATEST``
marker). :func:`install` adds an audit hook that acts when the point reached is named by

* ``ESPL_TEST_KILL_AT=<iteration>:<point>``: SIGKILL this process;
* the JSON list in the file ``ESPL_TEST_FAULTS`` names (read at every point, so a test can set the
  faults of processes it does not start itself, such as a grid's runs under Ray), each entry
  ``{"at": "<iteration>:<point>", "action": "kill" | "fail" | "wait", "method": M, "once": PATH,
  "release": PATH}``: kill (SIGKILL), fail (raise an error the CLI prints as one line, exit 2) or
  wait (write ``release``.reached, then wait until ``release`` exists); only in the run of
  ``--method M`` when given, only in the first process to create the file ``once`` when given.

Unset, it does nothing. The hook lives here, with the tests: nothing in the shipped package kills
anything. ``tests/hooked/sitecustomize.py`` installs it in every Python process started with that
folder on ``PYTHONPATH`` (a grid's runs, which ``espl-bench bench`` starts itself).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

VARIABLE = "ESPL_TEST_KILL_AT"
FAULTS = "ESPL_TEST_FAULTS"
EVENT = "espl_bench.point"


def _method() -> str | None:
    argv = sys.argv
    return argv[argv.index("--method") + 1] if "--method" in argv[:-1] else None


def _first(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _act(fault: dict) -> None:
    if fault.get("method") not in (None, _method()) or (fault.get("once") and not _first(fault["once"])):
        return
    if fault["action"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault["action"] == "fail":
        from espl_bench.errors import RunDirError

        raise RunDirError(f"injected failure at {fault['at']}; fix: none, the test wants it")
    elif fault["action"] == "wait":
        release = fault["release"]
        with open(release + ".reached", "w") as f:
            f.write(f"{os.getpid()}\n")
        while not os.path.exists(release):
            time.sleep(0.05)


def _faults() -> list[dict]:
    path = os.environ.get(FAULTS)
    if not path or not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def _hook(event: str, args: tuple) -> None:
    if event != EVENT:
        return
    point = f"{args[0]}:{args[1]}"
    if os.environ.get(VARIABLE) == point:
        os.kill(os.getpid(), signal.SIGKILL)
    for fault in _faults():
        if fault["at"] == point:
            _act(fault)


def install() -> None:
    """Act on the faults above from now on (audit hooks cannot be removed: once per process)."""
    sys.addaudithook(_hook)
