"""RL is seen to learn: on a toy task with an easy reward, ``rl`` on the tiny model raises its
mean train reward beyond noise within a few dozen steps, and does not at learning rate 0.

The whole real path runs (``espl-bench run --method rl``: rollouts, the group baseline's
advantages, TRL's GRPO step through the LoRA adapter, the in-process sampler generating with the
trained model), so a flipped advantage sign, a loss masked to nothing or an adapter the sampler
does not see fails here, where the other learner tests only check that weights move.
"""

from __future__ import annotations

import dataclasses
import json
import math
import string

import gymnasium as gym
import pytest
from gymnasium import spaces
from safetensors.torch import load_file
from scipy import stats

from espl_bench.running.cli import main

VOWELS = "aeiouAEIOU"


class FirstVowel(gym.Env):
    """A plain one-turn text env: reward 1 when the reply starts (after whitespace) with a vowel.

    The tiny model's first replies earn it about one time in ten, so a group of eight now and then
    holds both rewards, and a policy that puts a vowel first earns it every time."""

    def __init__(self):
        text = spaces.Text(max_length=10_000, charset=string.printable)
        self.observation_space, self.action_space = text, text

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return f"Say a word about the number {int(self.np_random.integers(1000))}.", {}

    def step(self, action):
        return "", float(action.lstrip()[:1] in tuple(VOWELS)), True, False, {}


ENV = "espl-test/FirstVowel-v0"
gym.register(id=ENV, entry_point=FirstVowel, disable_env_checker=True)

ITERATIONS, K = 14, 4  # the rise compared: the mean of the last K steps against the first K
ALPHA = 0.01  # one-sided level of the rise


def run_rl(tiny_model, out, monkeypatch, learning_rate: float | None = None, *extra: str) -> list[float]:
    """``espl-bench run --method rl`` on the toy env; the per-iteration mean train rewards.
    ``learning_rate`` replaces the learner's (the config refuses 0, a value a run has no use for)."""
    if learning_rate is not None:
        from espl_bench.training import policy

        settings = policy._settings

        def with_rate(*a, **k):
            made = settings(*a, **k)  # model_copy skips validation, so 0 passes
            return dataclasses.replace(made, run=made.run.model_copy(update={"learning_rate": learning_rate}))

        monkeypatch.setattr(policy, "_settings", with_rate)
    # A random tiny model's logits are nearly flat (sd 0.1, under a final norm that LoRA does not
    # train): at temperature 1 no adapter could make one token likely. At 0.03 they spread as a
    # trained model's do, and the adapter can move the policy within a few steps.
    args = ["run", "--env", ENV, "--method", "rl", "--model", str(tiny_model), "--out", str(out),
            "--iterations", str(ITERATIONS), "--programs", "1", "--batch-size", "4", "--group-size", "8",
            "--max-new-tokens", "2", "--temperature", "0.03", "--top-p", "1.0", "--learning-rate", "1e-3",
            "--lora-rank", "8", "--lora-alpha", "16", "--micro-batch-size", "2", "--eval-every", "0",
            "--eval-problems", "1", "--eval-samples", "1", "--seed", "0", *extra]
    assert main(args) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == list(range(1, ITERATIONS + 1))
    return [m["train_reward"] for m in metrics]


def rise(rewards: list[float]) -> tuple[float, float]:
    """The last K steps' mean reward minus the first K's, and the noise bound it must exceed: the
    one-sided (1 - ALPHA) quantile of Student's t at K - 1 degrees of freedom (the fewest Welch's
    test can have) times the difference's standard error, both from the per-step rewards."""
    first, last = rewards[:K], rewards[-K:]
    se = math.sqrt(stats.tvar(first) / K + stats.tvar(last) / K)
    return sum(last) / K - sum(first) / K, float(stats.t.ppf(1 - ALPHA, K - 1)) * se


def lora_b(out) -> dict:
    adapter = out / "learner" / f"checkpoint-{ITERATIONS}" / "adapter_model.safetensors"
    return {k: v for k, v in load_file(adapter).items() if "lora_B" in k}


def test_rl_raises_the_reward_on_an_easy_task(tiny_model, tmp_path, monkeypatch):
    rewards = run_rl(tiny_model, tmp_path / "rl", monkeypatch)
    gain, bound = rise(rewards)
    assert gain > bound, f"no rise beyond noise: {gain:.3f} <= {bound:.3f}, per-step rewards {rewards}"
    assert min(rewards[-K:]) > max(rewards[:2]), rewards  # learnt, not one lucky window


def test_no_rise_at_learning_rate_zero(tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "frozen"
    rewards = run_rl(tiny_model, out, monkeypatch, learning_rate=0.0)
    gain, bound = rise(rewards)
    assert gain <= bound, f"a rise without learning: {gain:.3f} > {bound:.3f}, per-step rewards {rewards}"
    assert 0 < sum(rewards) < len(rewards), rewards  # the task pays sometimes: the control is not vacuous
    # LoRA's B starts at zero; at learning rate 0 it stays there, so the sampled policy is the base model
    assert lora_b(out) and all(not b.any() for b in lora_b(out).values())


@pytest.mark.slow  # about 3 minutes on 2 CPU cores (175 s measured on a loaded machine)
def test_rl_raises_the_reward_one_step_off_policy(tiny_model, tmp_path, monkeypatch):
    """--max-staleness 1: every batch after the first is sampled by the weights of one step before
    the step that trains it, corrected by truncated importance sampling; the reward still rises."""
    out = tmp_path / "stale"
    rewards = run_rl(tiny_model, out, monkeypatch, None, "--max-staleness", "1")
    gain, bound = rise(rewards)
    assert gain > bound, f"no rise beyond noise: {gain:.3f} <= {bound:.3f}, per-step rewards {rewards}"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["staleness"]["staleness"] for m in metrics] == [0] + [1] * (ITERATIONS - 1)
    assert all(math.isfinite(m["importance"]["mean"]) for m in metrics)
