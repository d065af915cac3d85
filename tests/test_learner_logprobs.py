"""The learner scores each sample under the distribution the sampler drew it from."""

import pytest

from espl_bench.agents.sampler import SamplingParams, TransformersSampler
from espl_bench.method.learning import TrainingSample
from espl_bench.training.trl_learner import TRLLearner
from tests.fakes import learner_settings


def settings(tiny_model, tmp_path, temperature):
    return learner_settings(tiny_model, tmp_path, rows_per_step=4, group_size=2, max_new_tokens=12,
                            temperature=temperature, correct_sampler_logprobs=True)


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_trainer_logprobs_match_the_samplers_at_its_temperature(tiny_model, tmp_path, temperature):
    """TRL's importance ratio compares its own logprobs with the sampler's: with one set of
    weights they agree only where the trainer applies the sampling temperature (TRL's default,
    1.0, made every ratio of a 0.7-temperature run collapse)."""
    learner = TRLLearner(settings(tiny_model, tmp_path, temperature))
    sampler = TransformersSampler(learner.model, learner.tokenizer)
    conversations = [[{"role": "user", "content": f"Count to {n}."}] for n in (3, 3, 5, 5)]
    completions = sampler.generate(conversations, SamplingParams(max_new_tokens=12, temperature=temperature,
                                                                 top_p=1.0, seed=1))
    learner.submit([TrainingSample(c.prompt_ids, c.completion_ids, c.logprobs, reward=float(i % 2))
                    for i, c in enumerate(completions)])
    stats = learner.wait()
    learner.close()
    assert stats["sampling/sampling_logp_difference/max"] < 1e-3
    assert stats["sampling/importance_sampling_ratio/min"] == pytest.approx(1.0, abs=1e-2)
