"""Where a run's numbers came from: the code's version and commit, the libraries, the machine.

Written into every ``summary.json`` (by the process that wrote it) so that a leaderboard row can
say which code produced it; a number without its code version cannot be trusted across commits.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

# The libraries whose versions change what a run does.
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "gymnasium", "reasoning-gym", "textarena",
            "math-verify", "gepa", "litellm", "trueskill")


@functools.lru_cache(maxsize=1)
def provenance() -> dict:
    """``{"espl_bench", "git", "python", "platform", "cuda", "packages"}`` for this process."""
    import torch

    return {
        "espl_bench": _version("espl-bench"),
        "git": _git(Path(__file__).resolve().parents[2]),  # the checkout holding espl/running/
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "packages": {name: _version(name) for name in PACKAGES},
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(root: Path) -> dict | None:
    """The checkout's commit and whether tracked files differ from it (None outside a checkout)."""
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # no git binary, or a broken checkout: unknown, not fatal
        return None
    return {"commit": commit, "dirty": bool(changes)}
