"""textarena's partial-credit hook (:mod:`espl_bench.envs.games`).

Checked against textarena 0.7.4 (pinned, ``pyproject.toml``: ``textarena==0.7.4``). Its puzzles
compute the share of the puzzle done (the reward they give on an invalid final move) in a
private method, ``_get_percentage_completion``; a game cut off at the env's turn limit scores it.
"""

from __future__ import annotations

LIBRARY = "textarena"
CHECKED = "==0.7.4"
PROGRESS = "_get_percentage_completion"
# The single-player games espl-bench scores with partial credit (envs/games.py).
PUZZLES = ("GuessTheNumber-v0", "TowerOfHanoi-v0", "Sudoku-v0", "Minesweeper-v0")


def completion_fraction(game) -> float | None:
    """The share of ``game``'s puzzle done, as textarena computes it (None: the game has no such measure)."""
    progress = getattr(game, PROGRESS, None)
    return None if progress is None else float(progress())


def missing(game_ids: tuple[str, ...] = PUZZLES) -> list[str]:
    """The games of ``game_ids`` whose class in the installed textarena lacks the hook."""
    import importlib

    import textarena as ta

    gone = []
    for game_id in game_ids:
        spec = ta.envs.registration.ENV_REGISTRY.get(f"{game_id}-raw")
        if spec is None:
            gone.append(f"textarena game {game_id}")
            continue
        module, _, name = str(spec.entry_point).partition(":")
        cls = getattr(importlib.import_module(module), name) if name else spec.entry_point
        if not callable(getattr(cls, PROGRESS, None)):
            gone.append(f"{module}.{name}.{PROGRESS}")
    return gone
