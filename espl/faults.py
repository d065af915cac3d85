"""A test hook that kills the process at a named point, to prove resume works from anywhere.

``ESPL_TEST_KILL_AT=<iteration>:<point>`` sends SIGKILL to this process when iteration
``<iteration>`` reaches ``<point>``: a phase of the loop (``rollouts``, ``learn + reflect``,
``learn (after reflection)``, ``eval``) or ``commit`` (inside the commit, after the iteration
folder is in place and before the ``LATEST`` marker). Unset, it does nothing.
"""

from __future__ import annotations

import os
import signal

VARIABLE = "ESPL_TEST_KILL_AT"


def maybe_kill(iteration: int, point: str) -> None:
    target = os.environ.get(VARIABLE)
    if target and target == f"{iteration}:{point}":
        os.kill(os.getpid(), signal.SIGKILL)
