"""The run's training options reach TRL in one translation: ``LearnerSettings`` holds the run
config itself beside what the runner derives, and ``grpo_config`` reads the run's options."""

import dataclasses
import json

import pytest

from espl_bench.config import RunConfig
from espl_bench.training.trl_learner import LearnerSettings, grpo_config

# Same names, other meanings: the runner derives them from the run (the baseline's group spans
# every program under --baseline marginalize; --dtype auto resolved on the leader's machine).
DERIVED_NAMESAKES = {"group_size", "dtype"}


def settings(tmp_path, **run) -> LearnerSettings:
    cfg = RunConfig(env="espl/Arithmetic-v0", method="rl", programs=2, batch_size=3, group_size=4, **run)
    return LearnerSettings(run=cfg, model_path="unused", output_dir=tmp_path, rows_per_step=2 * 3 * 4, group_size=4,
                           dtype="bfloat16", resume_step=2, correct_sampler_logprobs=True, run_name="r")


def test_no_run_option_is_copied_into_the_learner_settings():
    names = {f.name for f in dataclasses.fields(LearnerSettings)}
    assert names & set(RunConfig.model_fields) == DERIVED_NAMESAKES


def test_grpo_config_reads_the_run_options_as_the_run_set_them(tmp_path):
    args = grpo_config(settings(tmp_path, learning_rate=3e-4, iterations=7, max_new_tokens=33, temperature=0.9,
                                seed=11, loss_type="dapo", scale_rewards="group", micro_batch_size=5,
                                gradient_checkpointing=False))
    assert (args.learning_rate, args.max_steps, args.max_completion_length, args.temperature, args.seed) == \
        (3e-4, 7, 33, 0.9, 11)
    assert (args.loss_type, args.scale_rewards, args.num_generations, args.bf16) == ("dapo", "group", 4, True)
    # 24 rows in passes of at most 5: the largest divisor of 24 not above 5 is 4, accumulated 6 times
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 6)
    assert not getattr(args, "activation_checkpointing", args.gradient_checkpointing)


@pytest.mark.parametrize("report_to", ["none", "tensorboard"])
def test_the_handshake_payload_round_trips_through_json(tmp_path, report_to):
    original = settings(tmp_path, report_to=report_to, lora_rank=8, env_kwargs={"min_terms": 2})
    rebuilt = LearnerSettings.from_payload(json.loads(json.dumps(original.payload())))
    assert rebuilt == original and rebuilt.run.lora_rank == 8
