"""``espl-bench plan``: a run's memory per device from the model's config (meta device, no weights).

The sizes come from the model itself (no table of model sizes): they are checked against a
loaded model, against Qwen3-8B's published parameter count from its bare ``config.json``, and
(slow) against the peak memory of a real run on this CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from espl_bench.config import RunConfig
from espl_bench.errors import ModelNotFound
from espl_bench.running.cli import main
from espl_bench.training import memory
from espl_bench.training.memory import GiB, Machine, make_plan, model_shape, render

QWEN3_8B = str(Path(__file__).parent / "data" / "qwen3-8b" / "config.json")
H100 = Machine(gpus=1, gpu_bytes=80 * GiB, host_bytes=128 * GiB)


def config(**flags) -> RunConfig:
    return RunConfig(env="espl/Arithmetic-v0", **flags)


def part(plan, name: str, device: int = 0, tenant: int = 0) -> int:
    return next(p.bytes for p in plan.devices[device].tenants[tenant].parts if p.name.startswith(name))


def test_the_meta_device_counts_are_those_of_the_loaded_model(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    shape = model_shape(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert shape.params == sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    lora = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert shape.lora_per_rank * 4 == sum(p.numel() for p in lora.parameters() if p.requires_grad)


def test_qwen3_8b_from_its_bare_config():
    shape = model_shape(QWEN3_8B)
    assert abs(shape.params - 8.19e9) < 0.01 * 8.19e9  # Qwen3-8B: 8.2B parameters (model card)
    config = json.loads(Path(QWEN3_8B).read_text())
    assert (shape.layers, shape.kv_dim, shape.vocab, shape.context) == (
        config["num_hidden_layers"], config["num_key_value_heads"] * config["head_dim"], config["vocab_size"],
        config["max_position_embeddings"])


def tenant(plan, name: str):
    return next(t for d in plan.devices for t in d.tenants if t.name.startswith(name))


def test_qwen3_8b_on_one_80gb_gpu_says_what_fits_and_what_to_change():
    """Colocated with its vLLM server at the default share, on one 80 GB GPU: the server's float32
    weights alone overflow its share, bfloat16 ones do not; the plan says so and its advice, applied,
    gives a plan that fits."""
    from espl_bench.training.placement import COLOCATED_SHARE

    shape = model_shape(QWEN3_8B)
    fp32 = make_plan(config(model=QWEN3_8B, sampler="vllm", dtype="float32"), H100)
    bf16 = make_plan(config(model=QWEN3_8B, sampler="vllm", dtype="bfloat16"), H100)
    assert (part(fp32, "policy weights"), part(bf16, "policy weights")) == (4 * shape.params, 2 * shape.params)
    server = tenant(fp32, "vLLM server")
    assert server.budget == int(COLOCATED_SHARE * H100.gpu_bytes)
    # What the server cannot do without: its weights, its workspace, one longest sequence's KV cache.
    least = {width: width * shape.params + memory.VLLM_WORKSPACE + memory.kv_cache(shape, width, 1, shape.context)
             for width in (4, 2)}
    assert least[4] > server.budget > least[2]
    assert server.need > server.budget and not fp32.fits
    assert all(t.need <= t.budget for d in bf16.devices for t in d.tenants) and bf16.fits
    table = render(fp32)
    assert f"{server.name}" in table and "OVER" in table and f"to fit: {' '.join(fp32.advice)}" in table
    assert fp32.advice[0] == "--dtype bfloat16"
    assert make_plan(config(model=QWEN3_8B, sampler="vllm", dtype="bfloat16"), H100, advise=False).fits
    # Without checkpointing, 16 rows of 1,280 tokens keep every layer's activations; the advice fixes it.
    heavy_flags = {"dtype": "bfloat16", "gradient_checkpointing": False, "micro_batch_size": 16, "max_new_tokens": 1024}
    heavy = make_plan(config(model=QWEN3_8B, **heavy_flags), H100)
    checkpointed = make_plan(config(model=QWEN3_8B, **{**heavy_flags, "gradient_checkpointing": True}), H100)
    assert part(heavy, "activations") > part(checkpointed, "activations")
    assert not heavy.fits and heavy.advice[0] == "--gradient-checkpointing"
    fixed = {flag.split()[0].removeprefix("--").replace("-", "_"): (flag.split() + ["true"])[1] for flag in heavy.advice}
    assert make_plan(config(model=QWEN3_8B, **{**heavy_flags, **fixed}), H100, advise=False).fits


def test_two_gpus_give_the_server_its_own():
    plan = make_plan(config(model=QWEN3_8B, sampler="vllm"), Machine(gpus=2, gpu_bytes=80 * GiB, host_bytes=0))
    (learner,), (server,) = (d.tenants for d in plan.devices)
    assert [d.device for d in plan.devices] == ["cuda:0", "cuda:1"]
    assert learner.budget == 80 * GiB and server.name == "vLLM server" and plan.fits


def test_the_plan_command_prints_a_table_or_json(capsys):
    assert main(["plan", "--model", QWEN3_8B, "--gpus", "1", "--gpu-memory", "80", "--sampler", "vllm",
                 "--dtype", "float32"]) == 1
    assert "to fit: --dtype bfloat16" in capsys.readouterr().out
    assert main(["plan", "--model", QWEN3_8B, "--gpus", "1", "--sampler", "vllm", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fits"] and data["dtype"] == "bfloat16" and data["devices"][0]["device"] == "cuda:0"


def test_a_model_whose_config_cannot_be_read_is_one_clear_error(tmp_path):
    with pytest.raises(ModelNotFound, match="fix:"):
        model_shape("nobody/not-in-the-cache")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelNotFound, match="cannot read the config"):
        model_shape(str(tmp_path / "config.json"))


def test_a_run_that_clearly_cannot_fit_stops_at_start_with_the_plans_advice(tiny_model, tmp_path, monkeypatch, caplog):
    small = Machine(gpus=0, host_bytes=GiB // 4)
    monkeypatch.setattr(memory.Machine, "this_one", classmethod(lambda cls, processes=1: small))
    out = tmp_path / "run"
    assert main(["run", "--env", "espl/Arithmetic-v0", "--method", "rl", "--model", str(tiny_model), "--out", str(out)]) == 2
    (error,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert error.startswith("this run cannot fit: espl-bench rank 0") and "GiB it has on RAM" in error
    assert "fix:" in error and "\n" not in error and not (out / "run.json").exists()


@pytest.mark.slow
def test_the_plan_is_within_a_quarter_of_a_real_runs_peak_memory_on_this_cpu(tmp_path):
    """A short rl run of the embedded model in a child process: its peak RSS against the plan's total
    for this CPU. The peak is the child's own VmHWM: ru_maxrss would not do, Linux carries it across
    exec from the forking process (here pytest, gigabytes into a full suite)."""
    flags = ["--env", "espl/Arithmetic-v0", "--method", "rl", "--iterations", "1", "--programs", "1", "--batch-size", "2",
             "--group-size", "2", "--max-new-tokens", "16", "--eval-problems", "1", "--eval-samples", "1",
             "--validation-problems", "0"]
    child = ("import sys\nfrom espl_bench.running.cli import main\n"
             f"assert main(['run', *{flags!r}, '--out', sys.argv[1]]) == 0\n"
             "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')) * 1024)\n")
    proc = subprocess.run([sys.executable, "-c", child, str(tmp_path / "run")], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = int(proc.stdout.split()[-1])
    cfg = RunConfig(**{k.removeprefix("--").replace("-", "_"): v for k, v in zip(flags[::2], flags[1::2])})
    planned = make_plan(cfg, Machine(gpus=0, host_bytes=memory.host_memory()), prompt_tokens=128).devices[0].need
    print(f"planned {planned / GiB:.2f} GiB, measured peak RSS {measured / GiB:.2f} GiB")
    assert abs(planned - measured) < 0.25 * measured, (planned / GiB, measured / GiB)
