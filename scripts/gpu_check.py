"""The GPU check: the transformers sampler and the TRL learner on CUDA for a few iterations.

    bash scripts/prepare-gpu-check.sh      # here: wheels and the model's config into .gpu-check/
    bash scripts/gpu-check.sh              # there: installs the wheels offline, runs this file

It runs what ``espl-bench run --method rl`` runs per iteration, without the env and reflection
packages a bare CUDA image lacks: sample ``problems x samples`` completions with
:class:`~espl_bench.agents.sampler.TransformersSampler` (each row seeded from its coordinates),
score them, and take one GRPO step with :class:`~espl_bench.training.learner.TRLLearner` (LoRA,
the run's defaults). It prints, per iteration, generated tokens, tokens/s and the step time, and
writes them as JSON.

The policy has SmolLM2-135M-Instruct's architecture and tokenizer with random weights: the
embedded GGUF (93 MB) is larger than what may travel to the GPU machine (64 MiB). A random
model rarely ends before ``--max-new-tokens``, so its rows are as long as they can be: the
tokens/s are those of full-length rows, and the step time is that of the longest batch.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def random_policy(config_dir: Path, into: Path) -> Path:
    """A randomly initialised model of the architecture in ``config_dir``, saved with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir))
    model.save_pretrained(into)
    for name in TOKENIZER_FILES:
        if (config_dir / name).exists():
            shutil.copy(config_dir / name, into / name)
    return into


def problems(iteration: int, count: int) -> list[tuple[str, str]]:
    rng = random.Random(1000 * iteration)
    pairs = [(rng.randint(10, 99), rng.randint(10, 99)) for _ in range(count)]
    return [(f"What is {a} + {b}? Answer with the number only.", str(a + b)) for a, b in pairs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-config", type=Path, default=Path(".gpu-check/model"),
                        help="folder with the policy's config.json and tokenizer (prepare-gpu-check.sh)")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4, help="completions per problem (the GRPO group)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--micro-batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None, help="write the measurements here as JSON")
    parser.add_argument("--allow-cpu", action="store_true", help="run without CUDA (to test this script)")
    args = parser.parse_args(argv)

    import torch
    from espl_bench.agents.sampler import SamplingParams, TransformersSampler
    from espl_bench.method.learning import TrainingSample
    from espl_bench.training.learner import LearnerSettings, TRLLearner

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu-check: torch sees no CUDA device; fix: run it on the GPU machine (or pass --allow-cpu to test it)",
              file=sys.stderr)
        return 2
    from espl_bench.running.versions import UnsupportedVersion, check

    try:  # the machine's own torch/transformers/accelerate must be ones the project tested
        check()
    except UnsupportedVersion as err:
        print(f"gpu-check: {err}", file=sys.stderr)
        return 2
    if not (args.model_config / "config.json").exists():
        print(f"gpu-check: no config.json in {args.model_config}; fix: run scripts/prepare-gpu-check.sh first",
              file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    model_path = random_policy(args.model_config, work / "policy")
    rows = args.problems * args.samples
    settings = LearnerSettings(
        model_path=str(model_path), output_dir=work / "learner", rows_per_step=rows, group_size=args.samples,
        total_steps=args.iterations, learning_rate=4e-5, lora_rank=16, lora_alpha=32, loss_type="dr_grpo",
        scale_rewards="none", max_completion_length=args.max_new_tokens, micro_batch_size=args.micro_batch_size,
        seed=0, temperature=0.7, gradient_checkpointing=False)
    learner = TRLLearner(settings)
    sampler = TransformersSampler(learner.model, learner.tokenizer, max_batch_size=rows)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.7)
    device = str(learner.model.device)
    report = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "model": "SmolLM2-135M architecture, random weights",
              "rows_per_iteration": rows, "max_new_tokens": args.max_new_tokens, "iterations": []}
    print(f"gpu-check: {report['device']} ({device}), {rows} rows per iteration, up to {args.max_new_tokens} "
          "new tokens each", flush=True)
    try:
        for it in range(args.iterations):
            items = [(q, a) for q, a in problems(it, args.problems) for _ in range(args.samples)]
            conversations = [[{"role": "user", "content": q}] for q, _ in items]
            seeds = [1_000_003 * it + row for row in range(rows)]
            start = time.perf_counter()
            completions = sampler.generate(conversations, params, seeds=seeds)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            sample_s = time.perf_counter() - start
            tokens = sum(len(c.completion_ids) for c in completions)
            batch = [TrainingSample(c.prompt_ids, c.completion_ids, c.logprobs, float(c.text.strip() == a))
                     for c, (_, a) in zip(completions, items)]
            start = time.perf_counter()
            learner.submit(batch)
            metrics = learner.wait()
            step_s = time.perf_counter() - start
            row = {"iteration": it + 1, "generated_tokens": tokens, "sample_seconds": round(sample_s, 3),
                   "tokens_per_second": round(tokens / sample_s, 1), "step_seconds": round(step_s, 3),
                   "loss": metrics.get("loss"), "grad_norm": metrics.get("grad_norm")}
            report["iterations"].append(row)
            print(f"  iteration {it + 1}: {tokens} tokens in {sample_s:.2f} s ({row['tokens_per_second']} tokens/s), "
                  f"GRPO step {step_s:.2f} s", flush=True)
    finally:
        learner.close()
    if torch.cuda.is_available():
        report["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    steady = report["iterations"][1:] or report["iterations"]
    report["steady_tokens_per_second"] = round(sum(r["tokens_per_second"] for r in steady) / len(steady), 1)
    report["steady_step_seconds"] = round(sum(r["step_seconds"] for r in steady) / len(steady), 3)
    print(f"gpu-check: after the first iteration {report['steady_tokens_per_second']} tokens/s, "
          f"GRPO step {report['steady_step_seconds']} s", flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
