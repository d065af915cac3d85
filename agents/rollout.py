"""The rollout engine: many episodes, advanced turn by turn, all turns of a step batched together.

Every episode runs under one system prompt; each turn, the replies of every live episode are
generated in one ``Sampler.generate`` call, then each env is stepped. A single-turn task is the
one-turn case of the same loop. An exception inside an env is recorded on that episode (reward
0, ``error`` set): a bad rollout is data, not a crash.

Seeding: an episode is seeded by its spec alone. ``reset`` gets ``spec.seed`` and the reply of
turn ``t`` is sampled with ``derive_seed(spec.seed, "turn", t)`` for that row only, so an episode
does not depend on the other episodes of the call, their number or their order. Callers derive
``spec.seed`` from the episode's coordinates (:mod:`espl_bench.scoring.evaluation` for test episodes).

Prompt placement: ``placement="system"`` sends the program as the system message;
``placement="user"`` appends it to the first user turn after the problem (the E-SPL reference
code's choice), with no system message, and sends the bare problem when the program is empty.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import gymnasium as gym

from espl_bench.agents import prefix_cache
from espl_bench.agents.sampler import Sampler, SamplingParams, derive_seed

log = logging.getLogger(__name__)


# The user-turn form of a program (placement "user"): the problem first, then the principles.
USER_PLACEMENT = "{observation}\n\nBefore you answer, read these principles carefully and apply them:\n{program}"


@dataclass(frozen=True)
class EpisodeId:
    """Where an episode sits in its caller's batch, carried through the engine into the rollout
    untouched (the engine never reads it); a caller fills the coordinates it has.

    ``program`` and ``slot``: the program's id and its place among the iteration's selected
    programs (a program selected twice has two slots); ``problem``: the problem's position in the
    caller's batch (the iteration's problems, or the item index in evaluation and GEPA);
    ``sample``: the sample's number on that problem; ``cell``: which prompt of an evaluation batch.
    """

    program: str | None = None
    slot: int | None = None
    problem: int | None = None
    sample: int | None = None
    cell: int | None = None


@dataclass(frozen=True)
class EpisodeSpec:
    """What to run: a system prompt on one problem of a split, seeded by ``seed`` alone."""

    system_prompt: str
    split: str
    index: int
    id: EpisodeId = EpisodeId()  # written to rollouts.jsonl as the record's spec.id dict
    seed: int = 0
    placement: str = "system"  # system | user (see the module docstring)

    def first_messages(self, observation: str) -> list[dict]:
        """The conversation that opens the episode."""
        if self.placement == "user":
            text = USER_PLACEMENT.format(observation=observation, program=self.system_prompt) if self.system_prompt.strip() else observation
            return [{"role": "user", "content": text}]
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": observation}]


@dataclass
class Rollout:
    """One finished episode with everything the rater, the learner and the reflector need."""

    spec: EpisodeSpec
    problem_id: str = ""
    observation: str = ""  # the env's first observation: the problem as the env states it
    messages: list[dict] = field(default_factory=list)
    reward: float = 0.0
    success: bool = False
    valid: bool = False
    answer: str = ""
    turns: int = 0
    truncated: bool = False
    error: str | None = None
    metadata: dict = field(default_factory=dict)
    invalid_actions: int = 0
    prompt_ids: list[int] = field(default_factory=list)
    completion_ids: list[int] = field(default_factory=list)  # model and environment tokens after the prompt
    logprobs: list[float] = field(default_factory=list)  # 0.0 on environment tokens
    env_mask: list[int] = field(default_factory=list)  # 1 where the model produced the token, 0 for env text
    finish_reason: str = ""
    generated_tokens: int = 0  # tokens the policy wrote (API samplers report them without ids)

    @property
    def response(self) -> str:
        """The last reply of the model."""
        for message in reversed(self.messages):
            if message["role"] == "assistant":
                return message["content"]
        return ""

    @property
    def turns_after_prompt(self) -> list[dict]:
        """The replies and environment messages after the opening conversation."""
        return self.messages[len(self.spec.first_messages(self.observation)):]

    def to_record(self, *, with_tokens: bool = False) -> dict:
        record = asdict(self)
        if not with_tokens:
            for key in ("prompt_ids", "completion_ids", "logprobs", "env_mask"):
                record.pop(key)
        return record

    @classmethod
    def from_record(cls, record: dict) -> Rollout:
        """The rollout :meth:`to_record` wrote (``with_tokens=True`` for one a step can train on)."""
        spec = dict(record["spec"])
        spec["id"] = EpisodeId(**spec.get("id") or {})
        return cls(**{**record, "spec": EpisodeSpec(**spec)})


# An episode never runs past this many turns unless ``max_turns`` allows more: a plain env that
# never terminates (and registered no max_episode_steps) cannot hang a run.
MAX_TURNS = 100


def indexed_reset(split: str, index: int, episode_seed: int) -> tuple[int, dict | None]:
    """How an espl-bench env starts problem ``index`` of ``split`` (a plain env: a SplitPlan's reset_args)."""
    return episode_seed, {"split": split, "index": index}


class RolloutEngine:
    """Runs episodes for a set of specs with one env instance per live episode.

    ``reset_args(split, index, episode_seed) -> (seed, options)`` says how an env starts a problem
    (:meth:`espl_bench.envs.splits.SplitPlan.reset_args`; espl-bench's indexed contract by default).
    """

    def __init__(self, env_factory: Callable[[], gym.Env], sampler: Sampler, *, max_turns: int | None = MAX_TURNS,
                 step_timeout: float | None = 60.0,
                 reset_args: Callable[[str, int, int], tuple[int, dict | None]] = indexed_reset):
        self.env_factory = env_factory
        self.sampler = sampler
        self.max_turns = max_turns
        self.step_timeout = step_timeout
        self.reset_args = reset_args
        self._envs: list[gym.Env] = []

    def _env(self, i: int) -> gym.Env:
        while len(self._envs) <= i:
            self._envs.append(self.env_factory())
        return self._envs[i]

    def _call(self, i: int, method: str, *args, **kwargs):
        """``env.<method>(...)`` with a deadline; a hung env is abandoned and replaced."""
        env = self._env(i)
        if self.step_timeout is None:
            return getattr(env, method)(*args, **kwargs)
        box: dict = {}

        def target() -> None:
            try:
                box["result"] = getattr(env, method)(*args, **kwargs)
            except BaseException as exc:  # re-raised in the caller's thread below
                box["error"] = exc

        # A daemon thread, because a hung env call cannot be interrupted: it is left behind
        # (and cannot keep the process alive), and the env instance is never used again.
        worker = threading.Thread(target=target, name=f"env-{method}", daemon=True)
        worker.start()
        worker.join(self.step_timeout)
        if worker.is_alive():
            self._envs[i] = self.env_factory()
            raise TimeoutError(f"env.{method} did not return within {self.step_timeout:g} s")
        if "error" in box:
            raise box["error"]
        return box["result"]

    def run(self, specs: Sequence[EpisodeSpec], params: SamplingParams) -> list[Rollout]:
        # Each turn's prompt extends the last: the sampler may continue from what it computed
        # (agents/prefix_cache.py) for as long as this call runs.
        with prefix_cache.reusing(self.sampler):
            return self._run(specs, params)

    def _run(self, specs: Sequence[EpisodeSpec], params: SamplingParams) -> list[Rollout]:
        rollouts = [Rollout(spec=spec) for spec in specs]
        live: list[int] = []
        for i, (spec, rollout) in enumerate(zip(specs, rollouts)):
            try:
                seed, options = self.reset_args(spec.split, spec.index, spec.seed)
                observation, info = self._call(i, "reset", seed=seed, options=options)
            except Exception as exc:  # a broken reset is one failed episode
                rollout.error = f"reset: {type(exc).__name__}: {exc}"
                continue
            rollout.problem_id = str(info.get("problem_id", f"{spec.split}/{spec.index}"))
            rollout.observation = str(observation)
            rollout.messages = spec.first_messages(rollout.observation)
            live.append(i)
        turn = 0
        while live:
            turn += 1
            completions = self.sampler.generate(
                [rollouts[i].messages for i in live],
                SamplingParams(max_new_tokens=params.max_new_tokens, temperature=params.temperature,
                               top_p=params.top_p, seed=params.seed + turn),
                prompt_ids=[rollouts[i].prompt_ids + rollouts[i].completion_ids if turn > 1 else None for i in live],
                seeds=[derive_seed(rollouts[i].spec.seed, "turn", turn) for i in live])
            still_live = []
            for i, completion in zip(live, completions):
                rollout = rollouts[i]
                rollout.messages.append({"role": "assistant", "content": completion.text})
                if turn == 1:
                    rollout.prompt_ids = list(completion.prompt_ids)
                rollout.completion_ids += completion.completion_ids
                rollout.logprobs += completion.logprobs
                rollout.env_mask += [1] * len(completion.completion_ids)
                rollout.generated_tokens += int(completion.metadata.get("completion_tokens", len(completion.completion_ids)))
                rollout.finish_reason = completion.finish_reason
                rollout.turns = turn
                if self._step(i, rollout, completion.text, turn):
                    still_live.append(i)
            live = still_live
            prefix_cache.retain([rollouts[i].prompt_ids + rollouts[i].completion_ids for i in live])
        return rollouts

    def _step(self, i: int, rollout: Rollout, action: str, turn: int) -> bool:
        """Step env ``i``; returns whether the episode goes on."""
        try:
            observation, reward, terminated, truncated, info = self._call(i, "step", action)
        except Exception as exc:
            rollout.error = f"step: {type(exc).__name__}: {exc}"
            log.warning("env step failed on %s: %s", rollout.problem_id, rollout.error)
            return False
        rollout.reward = float(reward)
        rollout.invalid_actions += 0 if info.get("valid", True) else 1
        rollout.success = bool(info.get("success", reward >= 1.0))
        rollout.valid = bool(info.get("valid", True))
        rollout.answer = str(info.get("answer", ""))
        rollout.metadata = dict(info.get("metadata", {}))
        if terminated or truncated:
            rollout.truncated = bool(truncated and not terminated)
            return False
        if self.max_turns is not None and turn >= self.max_turns:
            rollout.truncated = True
            return False
        new = [{"role": "user", "content": observation}]
        # The environment's text joins the token record masked out (env_mask 0): the learner
        # trains only on what the model wrote, and the next turn continues this exact record.
        env_tokens = self.sampler.continuation(rollout.messages, new, rollout.finish_reason == "stop")
        rollout.completion_ids += env_tokens
        rollout.logprobs += [0.0] * len(env_tokens)
        rollout.env_mask += [0] * len(env_tokens)
        rollout.messages += new
        return True

