"""The policy's ``--dtype``: what float32 and bfloat16 cost and buy on this machine.

For each dtype, the embedded model loaded by TRL as a run loads it (LoRA rank 16, micro-batches
of 2, gradient checkpointing, the run's defaults): the in-process sampler's tokens/s on 32 rows
(16 calibrated arithmetic problems x 2 samples, 64 new tokens, T=0.7), the time of one 32-row
GRPO step on those rows (the second of two; the first pays one-off set-up), and the mean token
loss of the same weights on the first 1,024 tokens of this repository's README. ``auto`` should
pick the dtype these numbers favour (``agents/devices.resolve_dtype``).

Run: python -m pytest benchmarks/test_policy_dtype.py --benchmark-autosave  (~4 min on 2 cores; the
bfloat16 case is skipped on a CPU that only emulates it)
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest

from espl_bench.agents.sampler import SamplingParams
from espl_bench.config import RunConfig
from espl_bench.envs.registry import make_env
from espl_bench.method.learning import TrainingSample

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ENV, ENV_KWARGS = "espl/Arithmetic-v0", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
PROBLEMS, GROUP, NEW_TOKENS = 16, 2, 64
SYSTEM = "Solve the problem. Think briefly, then give the final answer as <answer>N</answer>."


@pytest.fixture(scope="module")
def model_dir():
    from espl_bench.training.models import convert_embedded

    return convert_embedded()


def conversations() -> list[list[dict]]:
    env = make_env(ENV, **ENV_KWARGS)
    rows = []
    for index in range(PROBLEMS):
        observation, _ = env.reset(seed=0, options={"split": "train", "index": index})
        rows += [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": observation}]] * GROUP
    return rows


def readme_loss(model, tokenizer) -> float:
    import torch

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :1024]
    with torch.no_grad():
        return float(model(ids, labels=ids).loss)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_policy_step_and_sampling_by_dtype(benchmark, model_dir, tmp_path, dtype):
    from espl_bench.agents.devices import resolve_dtype
    from espl_bench.agents.sampler import TransformersSampler
    from espl_bench.training.trl_learner import LearnerSettings, TRLLearner

    if dtype == "bfloat16" and resolve_dtype("auto") != "bfloat16":
        pytest.skip("this CPU emulates bfloat16 (about 5x slower than float32; auto keeps float32 here)")
    run = RunConfig(env=ENV, env_kwargs=ENV_KWARGS, method="rl", iterations=2, programs=1, batch_size=PROBLEMS,
                    group_size=GROUP, max_new_tokens=NEW_TOKENS, dtype=dtype)  # the run's defaults otherwise
    learner = TRLLearner(LearnerSettings(run=run, model_path=str(model_dir), output_dir=tmp_path,
                                         rows_per_step=PROBLEMS * GROUP, group_size=GROUP, dtype=dtype))
    sampler = TransformersSampler(learner.model, learner.tokenizer)  # the very model TRL trains, as in a run
    rows = conversations()
    sampler.generate(rows[:2], SamplingParams(max_new_tokens=4))  # warm-up, not timed
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.7, top_p=0.95, seed=0)
    began = time.perf_counter()
    completions = sampler.generate(rows, params)
    sampling_s = time.perf_counter() - began
    tokens = sum(len(c.completion_ids) for c in completions)
    # Rewards 1, 0 in every group: no group is flat, so every row takes part in the step.
    batch = [TrainingSample(c.prompt_ids, c.completion_ids, c.logprobs, reward=float(i % 2 == 0))
             for i, c in enumerate(completions)]
    step_s: list[float] = []
    losses: list[float] = []

    def step():
        began = time.perf_counter()
        learner.submit(batch)
        losses.append(learner.wait()["loss"])
        step_s.append(time.perf_counter() - began)

    benchmark.pedantic(step, rounds=2, iterations=1, warmup_rounds=0)
    loss = readme_loss(learner.model, learner.tokenizer)
    learner.close()
    benchmark.extra_info.update({
        "dtype": dtype, "rows": len(rows), "max_new_tokens": NEW_TOKENS, "sampled_tokens": tokens,
        "sampler_tokens_per_s": round(tokens / sampling_s, 1), "first_step_s": round(step_s[0], 2),
        "step_s": round(step_s[1], 2), "readme_mean_token_loss": round(loss, 3),
        "load_average_1m": round(os.getloadavg()[0], 2),  # 2 shared cores: say how busy they were
    })
    assert tokens > len(rows) and all(map(math.isfinite, losses)) and loss < 10  # a broken dtype shows as noise
