"""Where the learner and the vLLM server run: the server's command line and environment built from flags.

No GPU is needed: :func:`place_vllm` takes the machine's GPU ids as an argument, and the server
object is only built (its ``command()`` and ``environment()``), never started.
"""

from __future__ import annotations

import os

import pytest

from espl_bench.agents import devices
from espl_bench.agents.vllm_server import VLLMServer
from espl_bench.config import RunConfig
from espl_bench.errors import ConfigError
from espl_bench.rundir import RunDir
from espl_bench.training.placement import COLOCATED_SHARE, OWN_GPU_SHARE, place_vllm
from espl_bench.training.policy import own_server


def config(**flags) -> RunConfig:
    return RunConfig(env="espl/Arithmetic-v0", sampler="vllm", **flags)


def server_for(placed, **kwargs) -> VLLMServer:
    return VLLMServer("/models/m", dtype=placed.dtype, devices=placed.devices, gpu_memory=placed.gpu_memory,
                      tensor_parallel=placed.tensor_parallel, max_model_len=placed.max_model_len, port=8000, **kwargs)


def flag(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


@pytest.fixture
def gpu_has_bf16(monkeypatch):
    monkeypatch.setattr(devices, "cuda_bf16", lambda: True)


def test_one_gpu_colocates_the_server_with_a_stated_share(gpu_has_bf16):
    placed = place_vllm(config(), ["0"], learner_processes=1, heads=32)
    assert placed.colocated and placed.devices == ("0",) and placed.gpu_memory == COLOCATED_SHARE
    server = server_for(placed)
    command = server.command()
    assert flag(command, "--gpu-memory-utilization") == str(COLOCATED_SHARE)
    assert flag(command, "--tensor-parallel-size") == "1" and flag(command, "--dtype") == "bfloat16"
    assert server.environment()["CUDA_VISIBLE_DEVICES"] == "0"
    assert "shared with the learner" in placed.describe() and f"{COLOCATED_SHARE:.0%}" in placed.describe()


def test_several_gpus_give_the_server_its_own_and_leave_the_learner_unrestricted(gpu_has_bf16, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    placed = place_vllm(config(), ["0", "1", "2"], learner_processes=1, heads=32)
    assert placed.devices == ("1", "2") and placed.learner_devices == ("0",) and not placed.colocated
    server = server_for(placed)
    assert server.environment()["CUDA_VISIBLE_DEVICES"] == "1,2"
    assert flag(server.command(), "--tensor-parallel-size") == "2"
    assert flag(server.command(), "--gpu-memory-utilization") == str(OWN_GPU_SHARE)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2", "the learner's own devices were restricted"


def test_machine_ids_under_a_restricted_parent_and_several_learner_processes():
    """CUDA_VISIBLE_DEVICES=4,5,6,7 and 2 learner processes: they take 4 and 5, the server 6 and 7."""
    placed = place_vllm(config(), ["4", "5", "6", "7"], learner_processes=2, heads=32)
    assert placed.learner_devices == ("4", "5") and placed.devices == ("6", "7") and placed.tensor_parallel == 2


def test_the_tensor_split_divides_the_attention_heads():
    placed = place_vllm(config(), ["0", "1", "2", "3"], learner_processes=1, heads=32)  # 3 spare GPUs
    assert placed.tensor_parallel == 2 and placed.devices == ("1", "2")
    assert place_vllm(config(), ["0", "1", "2", "3"], 1, heads=15).tensor_parallel == 3


def test_frozen_weights_leave_every_gpu_to_the_server():
    placed = place_vllm(config(method="evolution"), ["0", "1"], learner_processes=0, heads=32)
    assert placed.devices == ("0", "1") and not placed.colocated


def test_explicit_flags_win():
    cfg = config(vllm_devices="0", vllm_gpu_memory=0.3, vllm_tensor_parallel=1, dtype="float32", max_context=1024)
    placed = place_vllm(cfg, ["0", "1"], learner_processes=1, heads=32)
    assert placed.devices == ("0",) and placed.colocated and placed.gpu_memory == 0.3
    command = server_for(placed).command()
    assert flag(command, "--dtype") == "float32" and flag(command, "--max-model-len") == "1024"


def test_the_context_defaults_to_the_models_own():
    command = server_for(place_vllm(config(), [], 1)).command()
    assert "--max-model-len" not in command and "--gpu-memory-utilization" not in command


@pytest.mark.parametrize("native, expected", [(True, "bfloat16"), (False, "float32")])
def test_on_the_cpu_auto_follows_the_cpus_native_bfloat16(monkeypatch, native, expected):
    monkeypatch.setattr(devices, "native_bf16_cpu", lambda: native)
    placed = place_vllm(config(), [], learner_processes=1)
    assert placed.devices == () and placed.dtype == expected
    server = server_for(placed)
    assert flag(server.command(), "--dtype") == expected
    assert server.environment().get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")  # left as it was


@pytest.mark.parametrize("bf16, expected", [(True, "bfloat16"), (False, "float16")])
def test_on_a_gpu_auto_follows_the_gpu_not_the_host_cpu(monkeypatch, bf16, expected):
    monkeypatch.setattr(devices, "cuda_bf16", lambda: bf16)
    monkeypatch.setattr(devices, "native_bf16_cpu", lambda: not bf16)  # the host CPU must not matter
    assert place_vllm(config(), ["0"], 1, heads=8).dtype == expected


@pytest.mark.parametrize("flags, gpus, message", [
    ({"vllm_devices": "1"}, [], "torch sees none"),
    ({"vllm_tensor_parallel": 4, "vllm_devices": "1,2"}, ["0", "1", "2"], "needs as many GPUs"),
])
def test_impossible_placements_are_one_clear_error(flags, gpus, message):
    with pytest.raises(ConfigError, match=f"{message}.*fix:"):
        place_vllm(config(**flags), gpus, learner_processes=1, heads=32)


def test_the_runs_server_takes_the_start_up_limit_and_allows_run_time_lora_loading(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr("espl_bench.training.placement.visible_gpus", lambda: [])
    rundir = RunDir(tmp_path)
    server = own_server(config(vllm_startup_timeout=900, model=str(tiny_model)), str(tiny_model), rundir)
    assert server.startup_timeout == 900 and server.log_path == tmp_path / "vllm-server.log"
    assert server.environment()["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "--enable-lora" in server.command() and flag(server.command(), "--logprobs-mode") == "processed_logprobs"


@pytest.mark.parametrize("flags, message", [
    ({"sampler": "transformers", "vllm_devices": "1"}, "need --sampler vllm"),
    ({"vllm_url": "http://127.0.0.1:8000", "vllm_gpu_memory": 0.5}, "not one at --vllm-url"),
    ({"vllm_devices": "1,1"}, "distinct GPU ids"),
    ({"sampler": "trl-vllm", "method": "rl", "vllm_devices": "1"}, "--trl-vllm-args"),
])
def test_placement_flag_misuse_is_one_clear_error(flags, message):
    from espl_bench.config import build_config

    with pytest.raises(ConfigError, match=f"{message}.*") as failure:
        build_config({"env": "espl/Arithmetic-v0", "sampler": "vllm", **flags})
    assert "fix:" in str(failure.value) and "\n" not in str(failure.value)
