"""Multi-turn rollouts on a tiny model: environment tokens are recorded, masked and not trained."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from espl_bench.agents.rollout import EpisodeSpec, RolloutEngine
from espl_bench.agents.sampler import SamplingParams, TransformersSampler
from espl_bench.method.learning import TrainingSample
from espl_bench.running.cli import main
from espl_bench.training.trl_learner import TRLLearner
from tests.fakes import learner_settings
from tests.test_rollout import CountdownEnv


@pytest.fixture(scope="module")
def tiny_sampler(tiny_model):
    return TransformersSampler(AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model))


def test_env_tokens_are_masked_and_model_tokens_kept(tiny_sampler):
    engine = RolloutEngine(lambda: CountdownEnv(turns=3), tiny_sampler)
    rollouts = engine.run([EpisodeSpec("sys", "train", i) for i in range(2)], SamplingParams(max_new_tokens=6, seed=0))
    tok = tiny_sampler.tokenizer
    for r in rollouts:
        assert r.turns == 3
        assert len(r.completion_ids) == len(r.logprobs) == len(r.env_mask)
        env_text = tok.decode([t for t, m in zip(r.completion_ids, r.env_mask) if m == 0])
        assert env_text.count("next") == 2  # the two environment messages, and nothing else
        model_ids = [t for t, m in zip(r.completion_ids, r.env_mask) if m == 1]
        replies = [m["content"] for m in r.messages if m["role"] == "assistant"]
        assert tok.decode(model_ids, skip_special_tokens=True).replace("\n", "") == "".join(replies).replace("\n", "")
        assert all(lp == 0.0 for lp, m in zip(r.logprobs, r.env_mask) if m == 0)
        # the record reads as the chat template renders the episode: no turn was re-tokenized, yet
        # the text the model saw is exactly the conversation
        rendered = tok.apply_chat_template(r.messages[:-1], tokenize=False, add_generation_prompt=True)
        assert tok.decode(r.prompt_ids + r.completion_ids).startswith(rendered)


def test_learner_forwards_env_mask_to_trl(tiny_model, tmp_path):
    learner = TRLLearner(learner_settings(tiny_model, tmp_path, rows_per_step=2, group_size=2, max_new_tokens=16,
                                          micro_batch_size=2))
    batch = [TrainingSample([1, 2], [5, 6, 7], [-1.0, 0.0, -1.0], 1.0, [1, 0, 1]),
             TrainingSample([1, 2], [5, 8, 7], [-1.0, 0.0, -1.0], 0.0, [1, 0, 1])]
    assert learner._rollout_func_output(batch)["env_mask"] == [[1, 0, 1], [1, 0, 1]]
    single = [TrainingSample([1], [5], [-1.0], 1.0), TrainingSample([1], [6], [-1.0], 0.0)]
    assert "env_mask" not in learner._rollout_func_output(single)
    before = {k: v.clone() for k, v in learner.model.named_parameters() if "lora_B" in k}
    learner.submit(batch)
    learner.wait()
    learner.close()
    assert any(not torch.equal(before[k], v) for k, v in learner.model.named_parameters() if "lora_B" in k)


@pytest.mark.parametrize(("env_id", "env_kwargs"), [
    ("espl/SearchQA-v0", '{"corpus_size": 60, "train_size": 10, "validation_size": 4, "test_size": 5, "max_turns": 3}'),
    ("espl/ToolUse-v0", '{"max_turns": 2}'),
    ("espl/GuessTheNumber-v0", '{"max_turns": 3}'),
])
def test_espl_runs_on_multi_turn_envs_with_a_tiny_model(env_id, env_kwargs, tiny_model, tmp_path):
    args = ["run", "--env", env_id, "--env-kwargs", env_kwargs, "--model", str(tiny_model), "--iterations", "1",
            "--programs", "2", "--batch-size", "2", "--group-size", "2", "--max-new-tokens", "8",
            "--reflector-max-tokens", "16", "--eval-problems", "1", "--eval-samples", "2", "--out", str(tmp_path / "r")]
    assert main(args) == 0
    assert (tmp_path / "r" / "summary.json").is_file()
