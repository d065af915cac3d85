"""A test hook that kills the process at a named point, to prove resume works from anywhere.

The package announces its points with ``sys.audit("espl_bench.point", iteration, point)``: a
phase of the loop (``rollouts``, ``learn + reflect``, ``learn (after reflection)``, ``eval``) or
``commit`` (inside the commit, after the iteration folder is in place and before the ``LATEST``
marker). :func:`install` adds an audit hook that sends SIGKILL to this process when
``ESPL_TEST_KILL_AT=<iteration>:<point>`` names the point reached; unset, it does nothing. The
hook lives here, with the tests: nothing in the shipped package kills anything.
"""

from __future__ import annotations

import os
import signal
import sys

VARIABLE = "ESPL_TEST_KILL_AT"
EVENT = "espl_bench.point"


def _hook(event: str, args: tuple) -> None:
    if event == EVENT:
        target = os.environ.get(VARIABLE)
        if target and target == f"{args[0]}:{args[1]}":
            os.kill(os.getpid(), signal.SIGKILL)


def install() -> None:
    """Kill at ``$ESPL_TEST_KILL_AT`` from now on (audit hooks cannot be removed: once per process)."""
    sys.addaudithook(_hook)
