"""The learner's checkpointing switch under each transformers naming (5.17: gradient_, later: activation_)."""

from dataclasses import dataclass

import pytest

from espl_bench.training.trl_learner import checkpointing_option


@dataclass
class OldArguments:  # transformers 5.17's TrainingArguments, as TRL 1.16 extends it
    gradient_checkpointing: bool = True


@dataclass
class NewArguments:  # later 5.x: the new name, the old one a deprecated alias
    activation_checkpointing: bool | None = None
    gradient_checkpointing: bool | None = None


@pytest.mark.parametrize("enabled", [True, False])
def test_the_field_this_transformers_knows_is_the_one_set(enabled):
    assert checkpointing_option(OldArguments, enabled) == {"gradient_checkpointing": enabled}
    assert checkpointing_option(NewArguments, enabled) == {"activation_checkpointing": enabled}


@pytest.mark.parametrize("enabled", [True, False])
def test_the_installed_grpo_config_takes_it_and_honours_it(enabled, tmp_path):
    from trl import GRPOConfig

    # TRL defaults checkpointing on, so False taking effect shows the option reached the config
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **checkpointing_option(GRPOConfig, enabled))
    assert args.gradient_checkpointing is enabled
    assert getattr(args, "activation_checkpointing", enabled) is enabled
