"""Several learner processes under ``accelerate launch`` (DDP over gloo on this CPU machine).

The runs use a dense reward (``tests.fakes.ShortReplies``) so that every step has a gradient,
and the repository's own launch config, ``configs/accelerate/ddp.yaml``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes import DENSE_PLUGIN, launch_espl

FLAGS = ["--env", "dense_plugin:Short-v0", "--method", "rl", "--iterations", "2", "--programs", "1",
         "--batch-size", "2", "--group-size", "4", "--eval-problems", "1", "--eval-samples", "1",
         "--max-new-tokens", "16", "--learning-rate", "0.005", "--validation-problems", "0", "--seed", "3",
         "--dtype", "float32"]  # updates are compared up to float noise: not bfloat16, which auto picks on a CPU that has it
VOLATILE = {"seconds", "phase_seconds", "seconds_this_session"}
# The launcher's rendezvous port is picked here; the processes talk over loopback only.
pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    """A module registering the dense-reward env, importable by the launched processes."""
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "dense_plugin.py").write_text(DENSE_PLUGIN)
    return folder


def espl_run(plugin: Path, model: Path, out: Path, *extra: str, processes: int = 1, kill: str | None = None):
    return launch_espl([*FLAGS, "--model", str(model), "--out", str(out), *extra], plugin=plugin, processes=processes,
                       env={"ESPL_TEST_KILL_AT": kill or ""})


def adapter(out: Path, step: int) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "learner" / f"checkpoint-{step}" / "adapter_model.safetensors")


def metrics(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process(plugin, tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    proc = espl_run(plugin, tiny_model, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def two_processes(plugin, tiny_model, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("two") / "run"
    proc = espl_run(plugin, tiny_model, out, processes=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stderr


@pytest.mark.slow
def test_two_processes_train_like_one(one_process, two_processes):
    """Rank 0 samples the same batch, each rank trains on half of it, and DDP's averaged
    gradient gives the one-process update: same adapters after every step, up to float noise."""
    out, log = two_processes
    assert "learner: 2 processes (MULTI_CPU), 4 rows each per step" in log
    assert (out / "learner" / "checkpoint-2" / "rng_state_1.pth").is_file(), "rank 1 did not train"
    for step in (1, 2):
        one, two = adapter(one_process, step), adapter(out, step)
        update = max((one[k]).abs().max().item() for k in one if "lora_B" in k)  # lora_B starts at zero
        assert update > 1e-3, "the dense reward gave no update"
        assert max((one[k] - two[k]).abs().max().item() for k in one) < update * 1e-2
    expected, got = metrics(one_process), metrics(out)
    assert [m["train_reward"] for m in got] == [m["train_reward"] for m in expected]
    for a, b in zip(expected, got):
        assert b["learner"]["grad_norm"] == pytest.approx(a["learner"]["grad_norm"], rel=1e-3)


@pytest.mark.slow
def test_two_machines_train_like_two_processes_on_one(plugin, tiny_model, two_processes, tmp_path):
    """configs/accelerate/multinode.yaml with its documented command, as two machines of one process
    each meeting on loopback: the same updates as two processes on one machine."""
    from concurrent.futures import ThreadPoolExecutor

    from espl_bench.agents.vllm_server import free_port

    out, port = tmp_path / "run", free_port()
    config = Path(__file__).resolve().parents[1] / "configs/accelerate/multinode.yaml"

    def machine(rank: int):
        return launch_espl([*FLAGS, "--model", str(tiny_model), "--out", str(out)], plugin=plugin, processes=2,
                           accelerate_config=config, port=port,
                           launcher_args=("--machine_rank", str(rank), "--num_machines", "2", "--main_process_ip", "127.0.0.1"))

    with ThreadPoolExecutor(2) as pool:
        leader, follower = pool.map(machine, [0, 1])
    assert leader.returncode == 0 and follower.returncode == 0, (leader.stderr + follower.stderr)[-3000:]
    assert "learner: 2 processes (MULTI_CPU), 4 rows each per step" in leader.stderr
    for step in (1, 2):
        one_machine, two_machines = adapter(two_processes[0], step), adapter(out, step)
        assert max((one_machine[k] - two_machines[k]).abs().max().item() for k in one_machine) < 1e-6


def test_the_launch_configs_run_in_bfloat16_unless_the_policys_dtype_says_otherwise(monkeypatch):
    """Every config asks for bf16; the policy's --dtype decides what the trainer gets (float32 on a
    CPU without native bf16), and the multi-node config spans machines."""
    import yaml

    from espl_bench.training.distributed import align_mixed_precision

    configs = {p.name: yaml.safe_load(p.read_text()) for p in (Path(__file__).resolve().parents[1] / "configs/accelerate").glob("*.yaml")}
    assert {"ddp.yaml", "fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "multinode.yaml"} <= set(configs)
    assert {name: c["mixed_precision"] for name, c in configs.items()} == dict.fromkeys(configs, "bf16")
    assert configs["multinode.yaml"]["num_machines"] > 1
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    for dtype, expected in [("float32", "no"), ("bfloat16", "bf16"), ("float16", "fp16")]:
        align_mixed_precision(dtype)
        from transformers import TrainingArguments

        assert TrainingArguments(output_dir="unused", use_cpu=True, report_to=[]).mixed_precision == expected


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_a_run_killed_mid_step_resumes_exactly(processes, plugin, tiny_model, one_process, two_processes, tmp_path):
    """SIGKILL of rank 0 while its second step trains (the launcher then stops rank 1), and
    ``--resume`` under the same launch finishes exactly like the uninterrupted run: the resumed
    iteration samples from the committed weights, which a dense reward makes visible."""
    expected = one_process if processes == 1 else two_processes[0]
    out = tmp_path / "run"
    killed = espl_run(plugin, tiny_model, out, processes=processes, kill="2:learn (after reflection)")
    assert killed.returncode != 0
    assert (out / "LATEST").read_text().strip() == "1"
    resumed = espl_run(plugin, tiny_model, out, "--resume", processes=processes)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert metrics(out) == metrics(expected)
    for key, value in adapter(expected, 2).items():
        assert (adapter(out, 2)[key] - value).abs().max().item() < 1e-6


def test_a_batch_the_processes_cannot_share_is_one_clear_error(plugin, tiny_model, tmp_path):
    proc = espl_run(plugin, tiny_model, tmp_path / "run", "--batch-size", "3", "--group-size", "3", processes=2)
    assert proc.returncode != 0
    assert "a step has 9 rows" in proc.stderr and "fix: --batch-size 2 (6 rows) or --batch-size 4 (12 rows)" in proc.stderr
    assert "Traceback" not in proc.stderr.split("a step has 9 rows")[0], "the error is not the first thing reported"


@pytest.mark.slow
def test_a_run_with_nothing_to_train_releases_the_other_ranks(plugin, tiny_model, tmp_path):
    """Frozen-weight methods need no learner: rank 1 is told so and exits at once."""
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"contains": "", "answer": "no edits"}]))
    proc = espl_run(plugin, tiny_model, tmp_path / "run", "--method", "evolution", "--reflector", f"script:{script}",
                    processes=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["iterations_completed"] == 2


@pytest.mark.parametrize("processes", [1, 2, 4, 8])
def test_the_rule_for_sharing_a_step_and_the_fix_it_names(processes):
    """A step's rows split evenly or the run stops before any model loads, naming the nearest
    batch sizes that do split; the paper's default step (150 rows) splits over neither 4 nor 8."""
    from espl_bench.training.distributed import split_error

    default = split_error(3, 10, 5, processes, max_batch=100)
    assert (default is None) == (150 % processes == 0)
    if default:
        named = [int(word) for word in default.split("--batch-size ")[1:] for word in [word.split()[0]]]
        assert named and all(3 * b * 5 % processes == 0 for b in named)
        assert split_error(3, named[0], 5, processes, max_batch=100) is None
    assert split_error(3, 8, 5, processes, max_batch=100) is None  # --batch-size 8 splits over 1, 2, 4 and 8


def test_sharded_parameters_need_the_vllm_sampler(monkeypatch, tiny_model, tmp_path):
    from espl_bench.config import RunConfig
    from espl_bench.errors import ConfigError
    from espl_bench.training.policy import transformers_policy

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # accelerate shards on GPUs only
    cfg = RunConfig(env="espl/Arithmetic-v0", method="rl", model=str(tiny_model), out=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="shards the policy.*fix: add --sampler vllm"):
        transformers_policy(cfg, None, 8, 0)


def test_a_follower_leaves_with_its_code_after_leaving_the_group(monkeypatch):
    """A finished follower leaves the process group, then ends through ``os._exit`` (no interpreter
    teardown to abort in) with the code it was given."""
    from espl_bench.training import distributed

    calls = []

    class Exited(Exception):
        pass

    def fake_exit(code):
        calls.append(("exit", code))
        raise Exited

    monkeypatch.setattr(distributed, "shutdown", lambda: calls.append(("shutdown",)))
    monkeypatch.setattr(distributed.os, "_exit", fake_exit)
    monkeypatch.setattr(distributed.logging, "shutdown", lambda: calls.append(("logging",)))
    with pytest.raises(Exited):
        distributed.leave(3)
    assert calls == [("shutdown",), ("logging",), ("exit", 3)]
