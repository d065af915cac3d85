"""Single-player TextArena games behind the espl-bench text contract (see :mod:`envs.base`).

``TextArenaEnv(game="Sudoku-v0")`` wraps one textarena game that runs offline
(GuessTheNumber-v0, TowerOfHanoi-v0, Sudoku-v0, Minesweeper-v0, or any other single-player id
and variant of textarena's registry). ``game="TwentyQuestions-v0"`` also needs
``gamemaster="<litellm model>"``; see :mod:`envs.twenty_questions`. The contract:

* problem: a game seed. ``(split, index)`` maps to seed ``index`` (train) or
  ``TEST_SEED_OFFSET + index`` (test), so the splits never share a seed; the same
  ``(split, index)`` always gives the same game. ``split_size`` is ``train_size`` / ``test_size``.
* observation: the text the game shows the player as one string: the rules (with the move
  format) and board at reset, afterwards only what is new since the last turn (hints, board,
  feedback on an invalid move, the outcome).
* action: the model's reply, handed to the game unchanged; the game reads the bracketed move
  in it: ``[42]``, ``[A C]`` (TowerOfHanoi takes every such move in a reply), ``[5 3 7]`` (row
  col digit), ``[3 2]`` (row col). Each game's first observation explains its format.
* invalid move (whatever textarena rejects: bad format, illegal move, a wrong Sudoku digit, a
  Minesweeper mine): ``valid`` False, reward 0, the reason in the next observation. A second
  invalid move in a row ends the game with reward 0 (textarena's rule).
* reward in [0, 1]: a win is 1 and the only ``success``; a game lost outright is 0. After
  ``max_turns`` replies the episode is ``truncated`` and earns the game's own progress score
  (what textarena awards at its turn limit, e.g. share of Sudoku cells filled) unless
  ``partial_credit=False`` or that last move was invalid.
* the global ``random`` module is left as it was found: textarena seeds and draws from it, so
  every textarena call runs on a random state private to this env.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import textarena as ta

from envs.base import MAX_TEXT, TextEnv

TEST_SEED_OFFSET = 1_000_000
_RANDOM_LOCK = threading.Lock()  # two envs swapping the global random state must not interleave
# the fewest moves a win needs plus room for mistakes; other ids fall back to textarena's limit
DEFAULT_MAX_TURNS = {"GuessTheNumber-v0": 10, "TowerOfHanoi-v0": 20, "Sudoku-v0": 40, "Minesweeper-v0": 50,
                     "TwentyQuestions-v0": 21, "TwentyQuestions-v0-hardcore": 21}
# info["answer"], by game family: the secret the game keeps ("" where there is none yet:
# Minesweeper lays its mines on the first move)
_ANSWERS: dict[str, Callable[[Any], str]] = {
    "GuessTheNumber": lambda g: str(g.game_number),
    "TowerOfHanoi": lambda g: f"C: {list(range(g.num_disks, 0, -1))}",
    "Sudoku": lambda g: "\n".join("".join(map(str, row)) for row in g.full_grid),
    "Minesweeper": lambda g: " ".join(f"[{r} {c}]" for r, row in enumerate(g.grid) for c, v in enumerate(row) if v == -1),
    "TwentyQuestions": lambda g: g.game_word,
}


def _clip(x: float) -> float:
    return min(1.0, max(0.0, float(x)))


class TextArenaEnv(TextEnv):
    """One single-player textarena game per episode; see the module docstring."""

    metadata = {"render_modes": [], "kind": "agentic"}

    def __init__(self, game: str, max_turns: int | None = None, train_size: int = 10_000, test_size: int = 1_000,
                 partial_credit: bool = True, gamemaster: str | None = None, gamemaster_kwargs: dict | None = None,
                 **game_kwargs: Any):
        """``game_kwargs`` go to the textarena game (e.g. ``num_disks=4``, ``clues=40``);
        ``gamemaster_kwargs`` to ``litellm.completion`` (default ``temperature=0``)."""
        spec = ta.envs.registration.ENV_REGISTRY.get(f"{game}-raw")
        if spec is None:
            raise ValueError(f"unknown textarena game {game!r}")
        self.family = game.split("-")[0]
        if (self.family == "TwentyQuestions") != bool(gamemaster):
            raise ValueError("TwentyQuestions needs gamemaster='<litellm model>', e.g. 'openai/gpt-4o-mini'"
                             if gamemaster is None else f"{game} has no game master; drop gamemaster")
        super().__init__(max_turns=max_turns or DEFAULT_MAX_TURNS.get(game) or spec.kwargs.get("max_turns", 20))
        self.game_id, self.game_kwargs = game, {**spec.kwargs, **game_kwargs, "max_turns": self.max_turns}
        self.train_size, self.test_size, self.partial_credit = train_size, test_size, partial_credit
        self.gamemaster = gamemaster
        # drop_params: a model that rejects temperature (o-series) still answers
        self.gamemaster_kwargs = {"temperature": 0.0, "drop_params": True, **(gamemaster_kwargs or {})}
        self._game: Any = None
        self._rng_state: Any = None

    def _make_game(self) -> Any:
        # The game gets our max_turns so its prompt quotes it; its own turn limit then falls one
        # move after ours, so the cut-off is always this env's truncation.
        if self.gamemaster:
            from envs.twenty_questions import TwentyQuestionsGame  # imports litellm, which is slow

            return TwentyQuestionsGame(self.gamemaster, self.gamemaster_kwargs, **self.game_kwargs)
        # "-raw" skips textarena's default wrappers, which would replay the whole history each turn
        return ta.make(f"{self.game_id}-raw", **self.game_kwargs)

    def split_size(self, split: str) -> int:
        return self.train_size if split == "train" else self.test_size

    def _private_random(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        # textarena calls random.seed() in reset and draws from the global module (Minesweeper
        # lays mines on the first move): run it on this env's stream, give the caller's back.
        with _RANDOM_LOCK:
            outer = random.getstate()
            if self._rng_state is not None:
                random.setstate(self._rng_state)
            try:
                return fn(*args, **kwargs)
            finally:
                self._rng_state = random.getstate()
                random.setstate(outer)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        split, index = self._pick(options)
        self._seed = index if split == "train" else TEST_SEED_OFFSET + index
        # a fresh game each episode: textarena's reset keeps some state (20Q's question history)
        self._game, self._rng_state = self._make_game(), None
        self._private_random(self._game.reset, num_players=1, seed=self._seed)
        self._problem_id = f"{self.spec.id if self.spec else self.game_id}/{split}/{index}"
        self._turn, self._invalid, self._over = 0, 0, False
        return self._observe(), {"problem_id": self._problem_id, "split": split, "index": index, "seed": self._seed}

    def _observe(self) -> str:
        _, messages = self._game.get_observation()  # drains the queue: only what is new
        # textarena echoes the player's move back; the agent already has it in its chat
        return "\n\n".join(m.strip() for _, m, kind in messages if kind != ta.ObservationType.PLAYER_ACTION)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if self._game is None:
            raise RuntimeError("call reset() before step()")
        if self._over:
            raise RuntimeError("the episode is over; call reset()")
        self._turn += 1
        # 20Q's step draws no randomness: keep its game-master call outside the lock
        step = self._game.step if self.gamemaster else lambda a: self._private_random(self._game.step, a)
        done, _ = step(str(action))
        state = self._game.state
        # an invalid move leaves error_count > 0 until the next valid one, or ends the game
        # with game_info's invalid_move flag set
        valid = not (state.error_count or state.game_info[0]["invalid_move"])
        self._invalid += not valid
        observation, reason, raw = self._observe(), None, None
        truncated = not done and self._turn >= self.max_turns
        if done:
            reason, raw = state.game_info[0].get("reason"), (state.rewards or {}).get(0, 0.0)
            observation += f"\n\nGame over. {reason}"
        elif truncated:
            progress = getattr(self._game, "_get_percentage_completion", None)
            raw = progress() if progress and self.partial_credit else 0.0
            observation += f"\n\nGame over: the turn limit ({self.max_turns} turns) was reached."
        success = bool(done and valid and raw >= 1)
        reward = _clip(raw) if valid and raw is not None else 0.0
        self._over = done or truncated
        info = {
            "answer": _ANSWERS.get(self.family, lambda g: "")(self._game),
            "success": success,
            "valid": valid,
            "metadata": {"problem_id": self._problem_id, "game": self.game_id, "seed": self._seed,
                         "turn": self._turn, "invalid_moves": self._invalid, "reason": reason,
                         "game_reward": None if raw is None else float(raw)},
        }
        return observation.strip()[:MAX_TEXT], reward, bool(done), truncated, info
