"""The rollout engine and the baseline grouping, with a scripted sampler (no model)."""

import gymnasium as gym

from espl_bench.agents.rollout import EpisodeId, EpisodeSpec, RolloutEngine
from espl_bench.agents.sampler import Completion, SamplingParams
from espl_bench.envs.base import TextEnv
from espl_bench.method.advantage import group_size, training_batch


class EchoSampler:
    def __init__(self):
        self.batches = []

    def generate(self, conversations, params, prompt_ids=None, seeds=None):
        self.batches.append(len(conversations))
        return [Completion(text=f"<answer>{len(c)}</answer>", prompt_ids=[1, 2], completion_ids=[3, 4], logprobs=[-0.1, -0.2])
                for c in conversations]


    def continuation(self, history, new, ended_with_eos):
        return [7, 8]


class CountdownEnv(TextEnv):
    """Multi-turn toy: the episode lasts `turns` turns; reward 1 if the last answer says 6."""

    def __init__(self, turns=3, fail_on=None):
        super().__init__(max_turns=turns)
        self.turns, self.fail_on = turns, fail_on

    def split_size(self, split):
        return 5

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.split, self.index = self._pick(options)
        self.t = 0
        return f"problem {self.index}", {"problem_id": f"{self.split}/{self.index}"}

    def step(self, action):
        if self.index == self.fail_on:
            raise RuntimeError("boom")
        self.t += 1
        done = self.t >= self.turns
        reward = float(done and "6" in action)
        return "next", reward, done, False, {"answer": "6", "success": reward == 1.0, "valid": True, "metadata": {}}


def test_multi_turn_episodes_advance_together_and_batch_each_turn():
    sampler = EchoSampler()
    engine = RolloutEngine(lambda: CountdownEnv(turns=3), sampler)
    specs = [EpisodeSpec("sys", "train", i, EpisodeId(sample=i)) for i in range(4)]
    rollouts = engine.run(specs, SamplingParams())
    assert sampler.batches == [4, 4, 4]  # one batched call per turn, all episodes in it
    assert [r.turns for r in rollouts] == [3, 3, 3, 3]
    assert all(r.reward == 1.0 for r in rollouts)  # 6 messages in the history at the third reply
    assert [m["role"] for m in rollouts[0].messages] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert rollouts[2].spec.id == EpisodeId(sample=2)


def test_env_exception_is_a_failed_episode_not_a_crash():
    engine = RolloutEngine(lambda: CountdownEnv(turns=1, fail_on=1), EchoSampler())
    rollouts = engine.run([EpisodeSpec("s", "train", i) for i in range(3)], SamplingParams())
    assert rollouts[1].error.startswith("step: RuntimeError") and rollouts[1].reward == 0.0
    assert rollouts[0].error is None and rollouts[2].error is None


def test_turn_limit_truncates():
    engine = RolloutEngine(lambda: CountdownEnv(turns=5), EchoSampler(), max_turns=2)
    (rollout,) = engine.run([EpisodeSpec("s", "train", 0)], SamplingParams())
    assert rollout.turns == 2 and rollout.truncated


def make_rollouts():
    engine = RolloutEngine(lambda: CountdownEnv(turns=1), EchoSampler())
    specs = [EpisodeSpec("s", "train", q, EpisodeId(program=f"p{s}", slot=s, problem=j, sample=n))
             for s in range(2) for j, q in enumerate([0, 1]) for n in range(2)]
    rollouts = engine.run(specs, SamplingParams())
    for i, r in enumerate(rollouts):
        r.reward = float(i)
    return rollouts


def test_normal_baseline_groups_program_problem_pairs():
    batch = training_batch(make_rollouts()[::-1], "normal", eos_id=0, size=2).samples
    assert group_size("normal", 2, 2) == 2
    # blocks of 2: (slot 0, problem 0), (slot 0, problem 1), (slot 1, problem 0), (slot 1, problem 1)
    assert [s.reward for s in batch] == [0, 1, 2, 3, 4, 5, 6, 7]


def test_marginalize_baseline_groups_all_programs_per_problem():
    batch = training_batch(make_rollouts(), "marginalize", eos_id=0, size=4).samples
    assert group_size("marginalize", 2, 2) == 4
    assert [s.reward for s in batch] == [0, 1, 4, 5, 2, 3, 6, 7]


def test_episode_without_tokens_still_fills_its_row():
    rollouts = make_rollouts()
    rollouts[0].prompt_ids, rollouts[0].completion_ids = [], []
    batch = training_batch(rollouts, "normal", eos_id=9, size=2).samples
    assert batch[0].completion_ids == [9] and batch[0].reward == 0.0 and len(batch) == 8


def test_any_text_gymnasium_env_works_without_the_base_class():
    class Plain(gym.Env):
        observation_space = gym.spaces.Text(64)
        action_space = gym.spaces.Text(64)

        def reset(self, *, seed=None, options=None):
            return "say hi", {}

        def step(self, action):
            return "", float("hi" in action), True, False, {}

    (rollout,) = RolloutEngine(Plain, EchoSampler()).run([EpisodeSpec("s", "train", 0)], SamplingParams())
    assert rollout.turns == 1 and rollout.error is None and rollout.problem_id == "train/0"


def test_invalid_actions_are_counted_apart_from_success():
    from espl_bench.envs.tool_env import Problem, Tool, ToolEnv
    from espl_bench.method.rollout_stats import invalid_rate

    class Echo(ToolEnv):
        def split_size(self, split):
            return 3

        def problem(self, split, index):
            return Problem(question="Say 6.", answer="6")

        def tools(self):
            return {"echo": Tool("echo(text)", "repeat text", lambda text: text)}

        def score(self, answer, problem):
            return float(answer == problem.answer)

    class Scripted(EchoSampler):
        replies = ["no format here", '<tool_call>{"name": "echo", "arguments": {"text": "6"}}</tool_call>', "<answer>6</answer>"]

        def generate(self, conversations, params, prompt_ids=None, seeds=None):
            turn = len(self.batches)
            self.batches.append(len(conversations))
            return [Completion(text=self.replies[turn], prompt_ids=[1], completion_ids=[3], logprobs=[-0.1])
                    for _ in conversations]

    (rollout,) = RolloutEngine(lambda: Echo(max_turns=5), Scripted()).run([EpisodeSpec("s", "train", 0)], SamplingParams())
    assert (rollout.turns, rollout.invalid_actions, rollout.reward, rollout.success) == (3, 1, 1.0, True)
    assert "Invalid action" in rollout.messages[3]["content"]  # feedback reaches the model
    assert invalid_rate([rollout]) == 1 / 3


def test_hanging_env_step_is_timed_out_as_a_failed_episode():
    import time

    class Hangs(CountdownEnv):
        def step(self, action):
            if self.index == 0:
                time.sleep(30)
            return super().step(action)

    engine = RolloutEngine(lambda: Hangs(turns=1), EchoSampler(), step_timeout=0.5)
    started = time.monotonic()
    rollouts = engine.run([EpisodeSpec("s", "train", i) for i in range(2)], SamplingParams())
    assert time.monotonic() - started < 5
    assert rollouts[0].error == "step: TimeoutError: env.step did not return within 0.5 s"
    assert rollouts[1].error is None and rollouts[1].turns == 1


class RecordingEngine(RolloutEngine):
    """The real engine, keeping every call's specs and the rollouts it gave back."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def run(self, specs, params):
        rollouts = super().run(specs, params)
        self.calls.append((list(specs), rollouts))
        return rollouts


def test_an_episodes_id_crosses_from_the_loop_through_the_engine_and_back_unchanged():
    import random

    from espl_bench.config import RunConfig
    from espl_bench.envs.splits import SplitPlan
    from espl_bench.method.learning import FrozenLearner
    from espl_bench.method.loop import EsplLoop, Parts
    from espl_bench.method.program import Pool, Program
    from espl_bench.method.selection import make_selector

    cfg = RunConfig(env="espl/Arithmetic-v0", method="rl", iterations=1, programs=2, batch_size=2, group_size=3,
                    eval_problems=2, eval_samples=2)
    engine = RecordingEngine(lambda: CountdownEnv(turns=2), EchoSampler())
    parts = Parts(engine=engine, learner=FrozenLearner(), selector=make_selector("uniform"), mutation=None,
                  crossover=None, plan=SplitPlan.of_sizes(5, 5), eos_id=0)
    loop = EsplLoop(cfg, parts, Pool([Program("p0", {"G0": "a"})]), random.Random(0))
    result = loop.iteration(1)
    (train_specs, train_rollouts), (test_specs, test_rollouts) = engine.calls
    # training: every (program, slot, problem, sample) of the iteration, each once, with no cell
    assert {s.id for s in train_specs} == {EpisodeId(program="p0", slot=s, problem=j, sample=n)
                                            for s in range(2) for j in range(2) for n in range(3)}
    assert len(train_specs) == 12 and result.rollouts is train_rollouts
    # evaluation: the item index as the problem, the prompt's cell, no program or slot
    assert {s.id for s in test_specs} == {EpisodeId(problem=q, sample=n, cell=0) for q in range(2) for n in range(2)}
    assert all(r.spec.id.problem == r.spec.index for r in test_rollouts)
    for specs, rollouts in engine.calls:
        assert [r.spec.id for r in rollouts] == [s.id for s in specs]  # each rollout comes back with its own id
    # the record keeps the id as a dict (rollouts.jsonl)
    record = train_rollouts[5].to_record()
    assert record["spec"]["id"] == {"program": "p0", "slot": train_rollouts[5].spec.id.slot,
                                    "problem": train_rollouts[5].spec.id.problem,
                                    "sample": train_rollouts[5].spec.id.sample, "cell": None}
    assert "tags" not in record["spec"]
