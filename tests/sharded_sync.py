"""``python -m torch.distributed.run --nproc_per_node 2 -m tests.sharded_sync SCHEME MODEL OUT``: the
last step's push into vLLM with the policy's parameters sharded over two CPU processes (gloo).

SCHEME is ``fsdp2`` (torch's ``fully_shard`` per decoder layer, then the root: what
``configs/accelerate/fsdp.yaml`` asks accelerate for) or ``zero3`` (DeepSpeed ZeRO stage 3).
Accelerate applies both only on GPUs, so no trainer is built: each rank shards a LoRA policy
itself, builds TRL's own ``VLLMGeneration`` in colocate and in server mode over
:mod:`tests.fakes`' engines, and calls
:meth:`~espl_bench.training.trl_learner.TRLLearner.sync_final_weights` as every rank does when its
trainer ends. The stand-in for accelerate's ``Accelerator`` carries only what TRL reads of it.

Written under OUT: ``expected.pt`` (rank 0: the merged weights of an unsharded copy, by peft),
``<mode>/rank<R>-synced.pt`` (each engine's weights after the push; in server mode only rank 0
holds a client), ``rank<R>.json`` (how the rank held its parameters, and the step TRL records as
pushed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

LAST_STEP = 2


def lora_policy(path: str):
    """The tiny model with a LoRA whose B matrices are non-zero (a fresh one merges to the base)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path),
                           LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    return model


def shard(model, scheme: str) -> tuple[object, dict]:
    """Shard ``model`` over the process group; the plugin records TRL reads, and how a weight is held."""
    if scheme == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for layer in model.base_model.model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        weight = model.base_model.model.model.layers[0].mlp.down_proj.base_layer.weight
        held = {"local": weight.to_local().numel(), "full": weight.numel()}
        return SimpleNamespace(deepspeed_plugin=None, fsdp_plugin=SimpleNamespace(fsdp_version=2)), held
    import deepspeed

    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "zero_optimization": {"stage": 3}}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    weight = model.base_model.model.model.layers[0].mlp.down_proj.base_layer.weight
    held = {"local": weight.numel(), "full": weight.ds_numel}  # ZeRO-3 leaves an empty tensor in place
    return SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3), fsdp_plugin=None), held


def main(scheme: str, model_path: str, out: Path) -> None:
    from trl.generation import vllm_generation

    from espl_bench.training.trl_learner import TRLLearner
    from tests.fakes import fake_vllm

    if scheme == "zero3":
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    else:
        dist.init_process_group("gloo")
    rank = dist.get_rank()
    if rank == 0:
        torch.save(lora_policy(model_path).merge_and_unload().state_dict(), out / "expected.pt")
    model = lora_policy(model_path)
    state, held = shard(model, scheme)
    accelerator = SimpleNamespace(state=state, device=torch.device("cpu"), is_main_process=rank == 0,
                                  process_index=rank, local_process_index=rank, num_processes=dist.get_world_size(),
                                  wait_for_everyone=dist.barrier)
    pushed = {}
    for mode in ("colocate", "server"):
        (out / mode).mkdir(exist_ok=True)
        for name, value in fake_vllm([], served=model_path, record=out / mode).items():
            setattr(vllm_generation, name, value)
        generation = vllm_generation.VLLMGeneration(model, accelerator, None, mode=mode,
                                                    server_base_url="http://10.0.0.3:8000")
        trainer = SimpleNamespace(vllm_generation=generation, _last_loaded_step=LAST_STEP - 1,
                                  state=SimpleNamespace(global_step=LAST_STEP))
        TRLLearner.sync_final_weights(SimpleNamespace(settings=SimpleNamespace(trl_vllm={"vllm_mode": mode}),
                                                      trainer=trainer))
        pushed[mode] = trainer._last_loaded_step
    (out / f"rank{rank}.json").write_text(json.dumps({"held": held, "pushed": pushed}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
