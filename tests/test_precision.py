"""The policy's precision and model options (--dtype, --attn-implementation, --max-context) reach
every part that loads or runs the policy, and the run records them."""

import json
import math
import subprocess
import sys

import pytest
import torch

from espl_bench.agents.sampler import SamplingParams, TransformersSampler
from espl_bench.config import RunConfig
from espl_bench.errors import ConfigError
from espl_bench.method.learning import TrainingSample
from espl_bench.running.cli import main
from espl_bench.training.policy import load_frozen
from espl_bench.training.trl_learner import TRLLearner, grpo_precision
from tests.fakes import learner_settings

SMALL = ["--iterations", "1", "--programs", "2", "--batch-size", "2", "--group-size", "2", "--max-new-tokens", "8",
         "--reflector-max-tokens", "16", "--eval-problems", "2", "--eval-samples", "2", "--micro-batch-size", "4"]


@pytest.mark.parametrize("attention", [None, "eager", "sdpa", "flash_attention_2"])
@pytest.mark.parametrize(("dtype", "bf16", "fp16"), [("float32", False, False), ("bfloat16", True, False),
                                                     ("float16", False, True)])
def test_grpo_config_and_model_kwargs_for_each_dtype_and_attention(dtype, bf16, fp16, attention, tmp_path):
    from trl import GRPOConfig

    options = grpo_precision(dtype, attention)
    expected = {"dtype": dtype, **({"attn_implementation": attention} if attention else {})}
    assert options == {"bf16": bf16, "fp16": fp16, "model_init_kwargs": expected}
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, **options)  # TRL takes them as they are
    assert (args.bf16, args.fp16, args.model_init_kwargs) == (bf16, fp16, expected)


def test_the_frozen_copy_loads_in_the_policy_dtype_with_its_attention(tiny_model):
    model, _ = load_frozen(str(tiny_model), "bfloat16", "eager")
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "eager"
    assert not any(p.requires_grad for p in model.parameters())


def test_flash_attention_without_its_package_is_one_clear_error(tiny_model):
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    with pytest.raises(ConfigError, match="needs the flash-attn package.*fix:"):
        load_frozen(str(tiny_model), "float32", "flash_attention_2")


def settings(tiny_model, tmp_path, dtype):
    return learner_settings(tiny_model, tmp_path, rows_per_step=4, group_size=2, max_new_tokens=12,
                            correct_sampler_logprobs=True, dtype=dtype)


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


def test_a_bfloat16_step_on_cpu_trains_and_the_sampler_agrees_with_the_trainer(tiny_model, tmp_path):
    learner = TRLLearner(settings(tiny_model, tmp_path, "bfloat16"))
    assert learner.trainer.args.bf16 and learner.model.get_base_model().dtype == torch.bfloat16  # TRL loaded it so
    sampler = TransformersSampler(learner.model, learner.tokenizer)  # the very model TRL trains
    conversations = [[{"role": "user", "content": f"Count to {n}."}] for n in (3, 3, 5, 5)]
    completions = sampler.generate(conversations, SamplingParams(max_new_tokens=12, temperature=0.7, top_p=1.0,
                                                                 seed=1))
    before = lora_weights(learner.model)
    learner.submit([TrainingSample(c.prompt_ids, c.completion_ids, c.logprobs, reward=float(i % 2))
                    for i, c in enumerate(completions)])
    stats = learner.wait()
    after = lora_weights(learner.model)
    learner.close()
    assert math.isfinite(stats["loss"])
    assert any(not torch.equal(before[name], after[name]) for name in before)
    # bfloat16 keeps 8 significant bits: log-probabilities of one set of weights agree to about
    # a hundredth (the trainer autocasts, the sampler runs the bf16 weights as they are).
    assert stats["sampling/sampling_logp_difference/max"] < 0.02
    assert stats["sampling/importance_sampling_ratio/min"] == pytest.approx(1.0, abs=0.02)


def test_a_bfloat16_run_records_its_precision_in_run_json_and_summary_json(tiny_model, tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--env", "espl/Arithmetic-v0", "--method", "rl", "--model", str(tiny_model), "--out", str(out),
                 "--dtype", "bfloat16", "--attn-implementation", "eager", *SMALL]) == 0
    recorded = {"dtype": "bfloat16", "resolved": "bfloat16", "attn_implementation": "eager"}
    assert json.loads((out / "run.json").read_text())["precision"] == recorded
    assert json.loads((out / "summary.json").read_text())["precision"] == recorded


def test_auto_records_what_it_resolved_to_on_this_machine():
    from espl_bench.agents.devices import resolve_dtype
    from espl_bench.running.runner import precision

    cfg = RunConfig(env="espl/Arithmetic-v0")
    assert precision(cfg).model_dump() == {"dtype": "auto", "resolved": resolve_dtype("auto"),
                                           "attn_implementation": None}
    hosted = RunConfig(env="espl/Arithmetic-v0", method="evolution", sampler="litellm", model="openai/gpt-4o-mini")
    assert precision(hosted).resolved is None  # a hosted policy's precision is its provider's


@pytest.mark.parametrize(("values", "message"), [
    ({"max_context": 8}, "greater than or equal to 16"),
    ({"max_context": 64, "max_new_tokens": 64}, "leaves no room for a prompt"),
])
def test_a_context_that_cannot_hold_a_reply_is_refused_by_the_config(values, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(env="espl/Arithmetic-v0", **values)


def test_the_sampler_refuses_a_prompt_that_leaves_its_reply_budget_no_room(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    sampler = TransformersSampler(model, AutoTokenizer.from_pretrained(tiny_model), max_context=40)
    params = SamplingParams(max_new_tokens=8)
    assert len(sampler.generate([[]], params, prompt_ids=[list(range(100, 132))])[0].completion_ids) <= 8  # 32 + 8 fit
    with pytest.raises(ConfigError, match=r"a prompt of 33 tokens plus its reply budget of 8 exceeds the policy's "
                                          r"context of 40 tokens; fix: raise --max-context"):
        sampler.generate([[]], params, prompt_ids=[list(range(100, 133))])
    # without a context (the frozen reflector copies) nothing is checked
    assert TransformersSampler(model, sampler.tokenizer).generate([[]], params, prompt_ids=[list(range(100, 133))])


def test_a_run_whose_prompts_do_not_fit_the_context_stops_with_one_line_and_exit_2(tiny_model, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "espl_bench", "run", "--env", "espl/Arithmetic-v0", "--method",
                           "evolution", "--model", str(tiny_model), "--out", str(tmp_path / "run"), *SMALL,
                           "--max-context", "24"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "plus its reply budget of 8 exceeds the policy's context of 24 tokens" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if "ERROR" in line]) == 1


def test_a_folder_without_its_suite_identity_reads_the_dtype_from_run_json(tmp_path):
    from espl_bench.leaderboards.identity import read_identity

    header = {"config": {"env": "espl/Arithmetic-v0", "model": "m"}}
    (tmp_path / "run.json").write_text(json.dumps(header))
    assert read_identity(tmp_path).dtype == "float32"  # made before runs recorded it: float32 then
    header["precision"] = {"dtype": "auto", "resolved": "bfloat16", "attn_implementation": None}
    (tmp_path / "run.json").write_text(json.dumps(header))
    assert read_identity(tmp_path).dtype == "bfloat16"
