"""Single-player TextArena games behind the espl-bench text contract (see :mod:`envs.base`).

``TextArenaEnv(game="Sudoku-v0")`` wraps one textarena game that runs offline
(GuessTheNumber-v0, TowerOfHanoi-v0, Sudoku-v0, Minesweeper-v0, or any other single-player id
and variant of textarena's registry). ``game="TwentyQuestions-v0"`` also needs
``gamemaster="<litellm model>"``; see :mod:`envs.twenty_questions`. The contract:

* problem: one game configuration, and the splits (train, validation, test) are disjoint by
  configuration, not just by seed (:mod:`envs.splits`). GuessTheNumber's configuration is its
  secret: the numbers of its range are dealt to the splits by a hash of the number, so a split
  holds about a third of them (``split_size`` = how many). TowerOfHanoi's is its disk count:
  ``split_disks`` gives each split its counts (default: ``num_disks``, 3 unless a variant says
  otherwise, for train, one disk fewer for validation, one more for test: the harder game). Every other game (Sudoku's board, Minesweeper's mine layout,
  TwentyQuestions' word, any other game's opening board) is drawn: problem ``(split, index)`` is
  the game of the first seed derived from ``(split, index, attempt)`` whose content hashes into
  that split; ``split_size`` is ``train_size`` / ``validation_size`` / ``test_size``. The same
  ``(split, index)`` always gives the same game, and ``info["content_key"]`` names it.
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

from espl_bench.adapters import textarena as textarena_internals
from espl_bench.envs.base import MAX_TEXT, TextEnv
from espl_bench.envs.splits import SPLITS, content_split, derive, draw

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


# What identifies a game, by family, read off a game right after its reset (drawn families).
# Minesweeper lays its mines on the first move: its key is the layout after a first move in the
# centre, a pure function of the seed.
_CONTENT: dict[str, Callable[[Any], str]] = {
    "Sudoku": lambda g: "\n".join("".join(map(str, row)) for row in g.game_board),
    "TwentyQuestions": lambda g: g.game_word,
}


def _clip(x: float) -> float:
    return min(1.0, max(0.0, float(x)))


class TextArenaEnv(TextEnv):
    """One single-player textarena game per episode; see the module docstring."""

    metadata = {"render_modes": [], "kind": "agentic"}

    def __init__(self, game: str, max_turns: int | None = None, train_size: int = 10_000, test_size: int = 1_000,
                 partial_credit: bool = True, gamemaster: str | None = None, gamemaster_kwargs: dict | None = None,
                 validation_size: int = 1_000, split_disks: dict | None = None, **game_kwargs: Any):
        """``game_kwargs`` go to the textarena game (e.g. ``clues=40``, ``max_number=50``);
        ``gamemaster_kwargs`` to ``litellm.completion`` (default ``temperature=0``);
        ``split_disks`` (TowerOfHanoi) maps each split to its disk counts."""
        spec = ta.envs.registration.ENV_REGISTRY.get(f"{game}-raw")
        if spec is None:
            raise ValueError(f"unknown textarena game {game!r}")
        self.family = game.split("-")[0]
        if (self.family == "TwentyQuestions") != bool(gamemaster):
            raise ValueError("TwentyQuestions needs gamemaster='<litellm model>', e.g. 'openai/gpt-4o-mini'"
                             if gamemaster is None else f"{game} has no game master; drop gamemaster")
        super().__init__(max_turns=max_turns or DEFAULT_MAX_TURNS.get(game) or spec.kwargs.get("max_turns", 20))
        self.game_id, self.game_kwargs = game, {**spec.kwargs, **game_kwargs, "max_turns": self.max_turns}
        self.sizes = {"train": train_size, "validation": validation_size, "test": test_size}
        self.partial_credit = partial_credit
        self.configs = self._enumerated(split_disks)
        self.gamemaster = gamemaster
        # drop_params: a model that rejects temperature (o-series) still answers
        self.gamemaster_kwargs = {"temperature": 0.0, "drop_params": True, **(gamemaster_kwargs or {})}
        self._game: Any = None
        self._rng_state: Any = None

    def _enumerated(self, split_disks: dict | None) -> dict[str, list] | None:
        """Per split, the configurations of a family with few of them (None: a drawn family)."""
        if self.family == "TowerOfHanoi":
            n = int(self.game_kwargs.get("num_disks", 3))
            # num_disks (or a variant's) is the train game; validation has one disk fewer, test one more
            disks = {**({"train": [n], "validation": [n - 1], "test": [n + 1]}), **(split_disks or {})}
            counts = [int(n) for split in SPLITS for n in disks[split]]
            if len(set(counts)) < len(counts) or min(counts) < 1:
                raise ValueError(f"split_disks must give each split its own positive disk counts, got {disks}")
            return {split: list(disks[split]) for split in SPLITS}
        if split_disks is not None:
            raise ValueError(f"split_disks is for TowerOfHanoi, not {self.game_id}")
        if self.family == "GuessTheNumber":
            low, high = int(self.game_kwargs["min_number"]), int(self.game_kwargs["max_number"])
            numbers = range(low, high + 1)
            configs = {split: [n for n in numbers if content_split(f"GuessTheNumber/{n}") == split] for split in SPLITS}
            for split in SPLITS:  # a seeded order, so index 0.. are not the smallest numbers
                random.Random(derive("GuessTheNumber", low, high, split)).shuffle(configs[split])
            return configs
        return None

    def _make_game(self, **overrides: Any) -> Any:
        # The game gets our max_turns so its prompt quotes it; its own turn limit then falls one
        # move after ours, so the cut-off is always this env's truncation.
        kwargs = {**self.game_kwargs, **overrides}
        if self.gamemaster:
            from espl_bench.envs.twenty_questions import (
                TwentyQuestionsGame,  # imports litellm, which is slow
            )

            return TwentyQuestionsGame(self.gamemaster, self.gamemaster_kwargs, **kwargs)
        # "-raw" skips textarena's default wrappers, which would replay the whole history each turn
        return ta.make(f"{self.game_id}-raw", **kwargs)

    def split_size(self, split: str) -> int:
        if self.configs is not None:
            return len(self.configs[split])
        return self.sizes[split]

    def _content(self, seed: int) -> str:
        """What identifies the game of ``seed`` (drawn families), computed on a scratch game."""
        game = self._make_game()
        with _RANDOM_LOCK:
            outer = random.getstate()
            try:
                game.reset(num_players=1, seed=seed)
                if self.family in _CONTENT:
                    return _CONTENT[self.family](game)
                if self.family == "Minesweeper":
                    game.step(f"[{game.rows // 2} {game.cols // 2}]")
                    return " ".join(f"{r},{c}" for r, row in enumerate(game.grid) for c, v in enumerate(row) if v == -1)
                return "\n".join(m for _, m, _ in game.get_observation()[1])
            finally:
                random.setstate(outer)

    def _problem(self, split: str, index: int) -> tuple[int, dict, str]:
        """(game seed, game overrides, content key) of problem ``index`` of ``split``."""
        seed = derive("textarena", self.game_id, split, index) % 2**31
        if self.family == "GuessTheNumber":
            return seed, {}, f"secret {self._config(split, index)}"
        if self.family == "TowerOfHanoi":
            return seed, {"num_disks": self._config(split, index)}, f"{self._config(split, index)} disks"
        key = tuple(sorted((k, repr(v)) for k, v in self.game_kwargs.items()))
        seed = _drawn_seed(self, key, split, index)
        return seed, {}, self._content(seed)

    def _config(self, split: str, index: int) -> Any:
        """Problem ``index`` of ``split`` of a family whose problems are enumerated (``configs``)."""
        if self.configs is None:
            raise RuntimeError(f"{self.family} draws its problems; it has no enumerated configs")
        return self.configs[split][index]

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
        self._seed, overrides, content = self._problem(split, index)
        # a fresh game each episode: textarena's reset keeps some state (20Q's question history)
        self._game, self._rng_state = self._make_game(**overrides), None
        self._private_random(self._game.reset, num_players=1, seed=self._seed)
        if self.family == "GuessTheNumber":  # the split's secret, in place of the one reset drew
            self._game.game_number = self._game.state.game_state["game_number"] = self._config(split, index)
        self._problem_id = f"{self.spec.id if self.spec else self.game_id}/{split}/{index}"
        self._turn, self._invalid, self._over = 0, 0, False
        return self._observe(), {"problem_id": self._problem_id, "split": split, "index": index, "seed": self._seed,
                                 "content_key": content}

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
            progress = textarena_internals.completion_fraction(self._game) if self.partial_credit else None
            raw = progress or 0.0
            observation += f"\n\nGame over: the turn limit ({self.max_turns} turns) was reached."
        success = bool(done and valid and raw is not None and raw >= 1)
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


def _drawn_seed(env: TextArenaEnv, key: tuple, split: str, index: int) -> int:
    """The seed of problem ``index`` of ``split`` for a drawn family (cached per configuration)."""
    with _SEED_LOCK:
        cached = _SEEDS.get((env.game_id, key, split, index))
    if cached is not None:
        return cached
    seed = draw(split, index, lambda s: s % 2**31, env._content, "textarena", env.game_id, key)
    with _SEED_LOCK:
        _SEEDS[(env.game_id, key, split, index)] = seed
    return seed


_SEEDS: dict[tuple, int] = {}
_SEED_LOCK = threading.Lock()
