"""Leaderboards of run folders (markdown and a static HTML site) and score regression.

``build_leaderboard(roots)`` -> per-env boards; ``render_markdown`` / ``render_site`` present
them; ``compare_files`` / ``render_table`` back ``espl-bench bench compare``; ``get_suite`` is the
versioned list of configurations that ``espl-bench bench`` runs.

Names are imported lazily (PEP 562), so ``import espl_bench.leaderboards.suite`` does not load matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "aggregate": ["EnvBoard", "LeaderboardRow", "RunLoadError", "RunRecord", "aggregate", "build_leaderboard",
                  "load_run", "load_runs"],
    "render": ["render_markdown", "render_site"],
    "scores": ["ScoreFileError", "ScoreRecord", "ScoreReport", "compare", "compare_files", "dump_scores",
               "load_scores", "render_table"],
    "suite": ["SUITE_VERSION", "SUITES", "Suite", "SuiteConfig", "SuiteId", "get_suite"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'espl_bench.leaderboards' has no attribute {name!r}")
    return getattr(importlib.import_module(f"espl_bench.leaderboards.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
