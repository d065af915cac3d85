"""Environment ids: the built-ins, every reasoning-gym dataset, and plugins.

* Built-ins live under ``espl/`` (``espl/Arithmetic-v0``, ``espl/SearchQA-v0``, ...).
* Every reasoning-gym dataset is ``rg/<dataset>-v0`` (one id per dataset, so ids are stable and
  listable); its config options are ``gymnasium.make`` kwargs, e.g.
  ``--env-kwargs '{"min_terms": 3}'``.
* Plugins: ``--env mypkg:MyTask-v0`` imports ``mypkg`` first (Gymnasium's convention). Installed
  packages can also advertise a module in the ``espl_bench.envs`` entry-point group; listing
  imports those modules, and whatever they register with Gymnasium is listed.
"""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass, field

import gymnasium as gym

from espl_bench.errors import EnvNotFound

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "espl_bench.envs"


@dataclass(frozen=True)
class BuiltinEnv:
    id: str
    entry_point: str
    description: str
    kind: str = "reasoning"  # reasoning | agentic
    max_turns: int = 1
    kwargs: dict = field(default_factory=dict)


_GAMES = {  # id: (turn limit, description, game kwargs)
    # 1-50, not textarena's 1-20: the secrets are dealt to three disjoint splits, and 20 leave
    # about 6 per split; binary search still needs at most 6 of the 10 guesses
    "GuessTheNumber": (10, "textarena GuessTheNumber: find a hidden number 1-50 from higher/lower hints, guesses as [n]",
                       {"max_number": 50}),
    "TowerOfHanoi": (20, "textarena TowerOfHanoi: move the disks from peg A to peg C (train 3, validation 2, test 4 "
                         "disks), moves as [A C]", {}),
    "Sudoku": (40, "textarena Sudoku: fill a 60-clue 9x9 grid, moves as [row col digit]", {}),
    "Minesweeper": (50, "textarena Minesweeper: reveal every safe cell of an 8x8 board, moves as [row col]", {}),
}

BUILTIN = (
    BuiltinEnv("espl/Arithmetic-v0", "espl_bench.envs.reasoning_gym_env:ReasoningGymEnv",
               "reasoning-gym basic_arithmetic: integer expressions, exact answer",
               kwargs={"task": "basic_arithmetic", "min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}),
    BuiltinEnv("espl/MathJSONL-v0", "espl_bench.envs.math_jsonl:MathJSONLEnv",
               "competition math from JSONL files (train_path, test_path) or a paper preset, \\boxed{} answer, math-verify"),
    BuiltinEnv("espl/SearchQA-v0", "espl_bench.envs.search_qa:SearchQAEnv",
               "offline multi-hop QA over a seeded corpus of fictional entities, search (BM25) and open tools", "agentic", 8),
    BuiltinEnv("espl/ToolUse-v0", "espl_bench.envs.tool_use:ToolUseEnv",
               "unit-conversion word problems solved with calculator and convert tool calls", "agentic", 6),
    *(BuiltinEnv(f"espl/{game}-v0", "espl_bench.envs.games:TextArenaEnv", text, "agentic", turns, {"game": f"{game}-v0", **extra})
      for game, (turns, text, extra) in _GAMES.items()),
    BuiltinEnv("espl/TwentyQuestions-v0", "espl_bench.envs.games:TextArenaEnv",
               "textarena 20 Questions against a litellm game master: --env-kwargs '{\"gamemaster\": \"<model>\"}'",
               "agentic", 21, {"game": "TwentyQuestions-v0"}),
)


# composite mixes other datasets and needs their specs; it is not a task of its own.
_RG_EXCLUDED = {"composite"}


def _reasoning_gym_datasets() -> list[str]:
    from reasoning_gym.factory import DATASETS

    return sorted(set(DATASETS) - _RG_EXCLUDED)


def register_builtins() -> None:
    for spec in BUILTIN:
        if spec.id not in gym.registry:
            gym.register(id=spec.id, entry_point=spec.entry_point, kwargs=dict(spec.kwargs), disable_env_checker=True)
    for name in _reasoning_gym_datasets():
        env_id = f"rg/{name}-v0"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="espl_bench.envs.reasoning_gym_env:ReasoningGymEnv", kwargs={"task": name},
                         disable_env_checker=True)


def load_plugins() -> dict[str, list[str]]:
    """Import every ``espl_bench.envs`` entry point; returns ``{plugin: ids it registered}``."""
    found: dict[str, list[str]] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.value == "espl_bench.envs":
            continue  # this package itself
        before = set(gym.registry)
        try:
            ep.load()
        except Exception as exc:  # one broken plugin must not hide the others
            log.warning("environment plugin %r failed to load: %s", ep.name, exc)
            continue
        found[ep.name] = sorted(set(gym.registry) - before)
    return found


@dataclass(frozen=True)
class EnvInfo:
    id: str
    description: str
    kind: str
    max_turns: int | None
    source: str  # builtin | reasoning-gym | plugin:<name>


def list_envs(*, plugins: bool = True) -> list[EnvInfo]:
    """Every id espl-bench can run, with a one-line description."""
    import espl_bench.envs  # noqa: F401  (registers the built-ins)

    out = [EnvInfo(s.id, s.description, s.kind, s.max_turns, "builtin") for s in BUILTIN]
    out += [EnvInfo(f"rg/{n}-v0", f"reasoning-gym {n}", "reasoning", 1, "reasoning-gym") for n in _reasoning_gym_datasets()]
    if plugins:
        for name, ids in load_plugins().items():
            for env_id in ids:
                spec = gym.registry[env_id]
                obj = _resolve(spec.entry_point)
                doc = ((getattr(obj, "__doc__", None) or "").strip().splitlines() or [""])[0]
                kind = str(getattr(obj, "metadata", {}).get("kind", "?"))
                turns = spec.max_episode_steps or getattr(obj, "max_turns", None)
                out.append(EnvInfo(env_id, doc, kind, turns if isinstance(turns, int) else None, f"plugin:{name}"))
    return out


def _resolve(entry_point):
    if not isinstance(entry_point, str):
        return entry_point
    module, _, attr = entry_point.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except Exception:
        return None


def list_env_ids() -> list[str]:
    return [e.id for e in list_envs(plugins=False)]


def describe(env_id: str) -> str:
    return next((e.description for e in list_envs(plugins=False) if e.id == env_id), "")


def make_env(env_id: str, **kwargs) -> gym.Env:
    """``gymnasium.make`` with one clear error for an unknown id (``pkg:Id`` imports ``pkg``).

    The env keeps the wrappers its registration asks for: a plugin's ``max_episode_steps`` is its
    ``TimeLimit``, which truncates the episode. espl-bench's own methods (``split_size``) are
    read from ``env.unwrapped``.
    """
    import espl_bench.envs  # noqa: F401

    try:
        return gym.make(env_id, disable_env_checker=True, **kwargs)
    except (gym.error.NameNotFound, gym.error.NamespaceNotFound, gym.error.VersionNotFound,
            gym.error.UnregisteredEnv) as exc:
        raise EnvNotFound(f"unknown environment {env_id!r} ({exc}); fix: see espl-bench envs for the ids, "
                          "or use 'pkg:Name-v0' for a plugin") from None
    except ModuleNotFoundError as exc:
        raise EnvNotFound(f"cannot import the plugin for {env_id!r} ({exc}); fix: pip install the package that provides it") from None
    except TypeError as exc:
        raise EnvNotFound(f"bad keyword arguments for {env_id!r} ({exc}); fix: check --env-kwargs") from None
    except (ValueError, AssertionError, KeyError) as exc:  # the env's own check of its arguments
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EnvNotFound(f"cannot build {env_id!r}: {message}; fix: check --env-kwargs") from None
