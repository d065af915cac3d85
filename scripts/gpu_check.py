"""The GPU check: the transformers sampler and the TRL learner on CUDA for a few iterations.

    bash scripts/prepare-gpu-check.sh      # here: wheels and the model's config into .gpu-check/
    bash scripts/gpu-check.sh              # there: installs the wheels offline, runs this file

It runs what ``espl-bench run --method rl`` runs per iteration, without the env and reflection
packages a bare CUDA image lacks: sample ``problems x samples`` completions with
:class:`~espl_bench.agents.sampler.TransformersSampler` (each row seeded from its coordinates;
its lean path, checked on every call: no ``output_logits``, the chosen tokens' log-probabilities
kept by ``ChosenLogprobs``), score them, and take one GRPO step with
:class:`~espl_bench.training.trl_learner.TRLLearner` (LoRA, the run's defaults) in ``--dtype``
(bfloat16 unless told). It prints, per iteration, generated tokens, tokens/s and the step time.

Peak memory, per phase: on CUDA ``torch.cuda.max_memory_allocated`` (reset before each phase),
on a CPU the process's peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``). Both are
set against ``espl-bench plan``'s prediction for the same settings (:func:`make_plan` on this
machine, the measured prompt length; on CUDA less the plan's CUDA context, which the allocator
does not count); a peak more than ``--max-over`` (25%) above the plan fails the check (exit 1).
The last line is ``gpu-check summary: {json}``: tokens/s, step seconds, peak and planned memory,
dtype, device and versions, the row benchmarks/README.md takes.

The policy has SmolLM2-135M-Instruct's architecture and tokenizer with random weights: the
embedded GGUF (93 MB) is larger than what may travel to the GPU machine (64 MiB). A random
model rarely ends before ``--max-new-tokens``, so its rows are as long as they can be: the
tokens/s are those of full-length rows, and the step time is that of the longest batch.

What it imports beyond the borrowed machine's own packages (:data:`MACHINE_HAS` and what they
require) travels as wheels (:data:`CARRIED`, read by prepare-gpu-check.sh);
tests/test_gpu_check.py runs it with every other distribution hidden.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")
# What the borrowed GPU machines have installed (../shared/reference/gpu-and-scale.md), with
# whatever these require; and the distributions the check carries to them as wheels.
MACHINE_HAS = ("torch", "transformers", "accelerate", "peft", "pandas", "pyarrow", "xxhash", "psutil")
CARRIED = ("espl-bench", "trl", "datasets", "dill", "multiprocess",  # the learner (TRL) and its dataset
           "pydantic", "pydantic-core", "annotated-types", "typing-inspection")  # the run config the plan reads
VERSIONS = ("torch", "transformers", "trl", "peft", "accelerate")
DTYPES = ("bfloat16", "float16", "float32")


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


class PeakMemory:
    """Peak memory of a phase: CUDA's allocator peak, or on a CPU the process's peak RSS (VmHWM),
    both reset at :meth:`start`. A kernel that refuses the reset leaves the CPU peaks cumulative
    (``resets`` False): still an upper bound of each phase's."""

    def __init__(self, cuda: bool):
        import torch

        self.cuda, self._torch, self.resets = cuda, torch, True

    def start(self) -> None:
        if self.cuda:
            self._torch.cuda.synchronize()
            self._torch.cuda.reset_peak_memory_stats()
            return
        try:  # "5" resets the peak RSS (proc(5), Linux 4.0 and later)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.resets = False

    def peak(self) -> int:
        if self.cuda:
            self._torch.cuda.synchronize()
            return int(self._torch.cuda.max_memory_allocated())
        status = Path("/proc/self/status").read_text().splitlines()
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024


def lean_only(model) -> dict:
    """Wrap ``model.generate`` so that every call is checked to take the lean path: no per-step
    logits or scores kept, ``ChosenLogprobs`` among the processors. Returns the calls' tally."""
    from espl_bench.agents.sampler import ChosenLogprobs

    tally = {"generate_calls": 0}
    original = model.generate

    def generate(*args, **kwargs):
        kept = [k for k in ("output_logits", "output_scores", "return_dict_in_generate") if kwargs.get(k)]
        if kept or not any(isinstance(p, ChosenLogprobs) for p in kwargs.get("logits_processor") or ()):
            raise AssertionError(f"the sampler left its lean path: generate got {kept or 'no ChosenLogprobs'}")
        tally["generate_calls"] += 1
        return original(*args, **kwargs)

    model.generate = generate
    return tally


def run_config(args: argparse.Namespace):
    """The run config whose rl iteration this check runs (what ``espl-bench plan`` is given).
    Built unvalidated: the run's checks of its flags import what only a run needs (wordfreq, for
    the principle language), which the GPU machine does not have; these values are plain."""
    from espl_bench.config import RunConfig

    return RunConfig.model_construct(env="espl/Arithmetic-v0", method="rl", model=str(args.model_config), programs=1,
                     iterations=args.iterations, batch_size=args.problems, group_size=args.samples,
                     max_new_tokens=args.max_new_tokens,
                     micro_batch_size=args.micro_batch_size, lora_rank=16, gradient_checkpointing=False,
                     dtype=args.dtype, sampler="transformers")


def planned(cfg, cuda: bool, prompt_tokens: int) -> dict[str, int]:
    """``espl-bench plan``'s bytes for rank 0, per phase and at its peak. On CUDA the plan's CUDA
    context is left out: ``max_memory_allocated`` counts tensors only."""
    from espl_bench.training.memory import Machine, host_memory, make_plan

    machine = Machine.this_one() if cuda else Machine(gpus=0, host_bytes=host_memory())
    tenant = make_plan(cfg, machine, prompt_tokens, advise=False).devices[0].tenants[0]
    always = sum(p.bytes for p in tenant.parts if not p.phase and not (cuda and p.name == "CUDA context"))
    phases = {phase: always + sum(p.bytes for p in tenant.parts if p.phase == phase) for phase in ("sample", "update")}
    return {**phases, "peak": max(phases.values())}


def versions() -> dict[str, str]:
    from importlib import metadata

    return {"python": platform.python_version(), **{name: metadata.version(name) for name in VERSIONS}}


def refuse(args: argparse.Namespace) -> str | None:
    """Why this machine or these flags cannot run the check (one line), or None."""
    import torch

    from espl_bench.running.versions import UnsupportedVersion, check

    if not torch.cuda.is_available() and not args.allow_cpu:
        return "torch sees no CUDA device; fix: run it on the GPU machine (or pass --allow-cpu to test it)"
    try:  # the machine's own torch/transformers/accelerate must be ones the project tested
        check()
    except UnsupportedVersion as err:
        return str(err)
    if not (args.model_config / "config.json").exists():
        return f"no config.json in {args.model_config}; fix: run scripts/prepare-gpu-check.sh first"
    return None


def iterate(it: int, args: argparse.Namespace, sampler, learner, peaks: PeakMemory) -> dict:
    """One iteration: sample, score, one GRPO step; its tokens, times and per-phase peaks."""
    import torch

    from espl_bench.agents.sampler import SamplingParams
    from espl_bench.method.learning import TrainingSample

    rows = args.problems * args.samples
    items = [(q, a) for q, a in problems(it, args.problems) for _ in range(args.samples)]
    conversations = [[{"role": "user", "content": q}] for q, _ in items]
    seeds = [1_000_003 * it + row for row in range(rows)]
    peaks.start()
    start = time.perf_counter()
    completions = sampler.generate(conversations, SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.7),
                                   seeds=seeds)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    sample_s, sample_peak = time.perf_counter() - start, peaks.peak()
    tokens = sum(len(c.completion_ids) for c in completions)
    batch = [TrainingSample(c.prompt_ids, c.completion_ids, c.logprobs, float(c.text.strip() == a))
             for c, (_, a) in zip(completions, items)]
    peaks.start()
    start = time.perf_counter()
    learner.submit(batch)
    metrics = learner.wait()
    step_s, step_peak = time.perf_counter() - start, peaks.peak()
    return {"iteration": it + 1, "generated_tokens": tokens, "sample_seconds": round(sample_s, 3),
            "tokens_per_second": round(tokens / sample_s, 1), "step_seconds": round(step_s, 3),
            "loss": metrics.get("loss"), "grad_norm": metrics.get("grad_norm"),
            "prompt_tokens": max(len(c.prompt_ids) for c in completions),
            "sample_peak_bytes": sample_peak, "step_peak_bytes": step_peak}


def gib(n: float) -> float:
    return round(n / 2**30, 3)


def compare(report: dict, plan: dict[str, int], max_over: float) -> bool:
    """Measured peaks against the plan, into ``report``; whether the overall peak is within ``max_over``."""
    its = report["iterations"]
    measured = {"sample": max(r["sample_peak_bytes"] for r in its), "update": max(r["step_peak_bytes"] for r in its)}
    measured["peak"] = max(measured.values())
    report["memory"] = {phase: {"measured_gib": gib(measured[phase]), "planned_gib": gib(plan[phase]),
                                "ratio": round(measured[phase] / plan[phase], 3)} for phase in ("sample", "update", "peak")}
    report["peak_memory_gib"] = gib(measured["peak"])
    for phase, row in report["memory"].items():
        print(f"  memory {phase:6s}: measured {row['measured_gib']} GiB, planned {row['planned_gib']} GiB "
              f"(ratio {row['ratio']})", flush=True)
    return measured["peak"] <= (1 + max_over) * plan["peak"]


def summary(report: dict) -> dict:
    """The one line benchmarks/README.md takes."""
    keys = ("device", "dtype", "sampler", "rows_per_iteration", "max_new_tokens", "steady_tokens_per_second",
            "steady_step_seconds", "peak_memory_gib", "memory_measure", "versions")
    return {**{k: report[k] for k in keys}, "planned_peak_gib": report["memory"]["peak"]["planned_gib"],
            "measured_over_planned": report["memory"]["peak"]["ratio"], "plan_ok": report["plan_ok"]}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-config", type=Path, default=Path(".gpu-check/model"),
                        help="folder with the policy's config.json and tokenizer (prepare-gpu-check.sh)")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4, help="completions per problem (the GRPO group)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--micro-batch-size", type=int, default=16)
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="the policy's dtype (trainer and sampler)")
    parser.add_argument("--max-over", type=float, default=0.25,
                        help="fail when the measured peak memory exceeds the plan's by more than this fraction")
    parser.add_argument("--out", type=Path, default=None, help="write the measurements here as JSON")
    parser.add_argument("--allow-cpu", action="store_true", help="run without CUDA (to test this script)")
    parser.add_argument("--carried", action="store_true", help="print the distributions the check carries as wheels")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.carried:
        print("\n".join(CARRIED))
        return 0
    reason = refuse(args)
    if reason:
        print(f"gpu-check: {reason}", file=sys.stderr)
        return 2

    import torch

    from espl_bench.agents.sampler import TransformersSampler
    from espl_bench.training.memory import SAMPLER_BATCH
    from espl_bench.training.trl_learner import LearnerSettings, TRLLearner

    cuda = torch.cuda.is_available()
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    model_path = random_policy(args.model_config, work / "policy")
    rows = args.problems * args.samples
    settings = LearnerSettings(run=run_config(args), model_path=str(model_path), output_dir=work / "learner",
                               rows_per_step=rows, group_size=args.samples, dtype=args.dtype)
    peaks = PeakMemory(cuda)
    learner = TRLLearner(settings)
    # The run's own sampler batch (memory.SAMPLER_BATCH), so that the plan's figures are this check's.
    sampler = TransformersSampler(learner.model, learner.tokenizer, max_batch_size=SAMPLER_BATCH)
    lean = lean_only(sampler.model)
    report = {"device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.processor() or platform.machine()})",
              "dtype": str(learner.model.dtype).removeprefix("torch."), "versions": versions(),
              "model": "SmolLM2-135M architecture, random weights", "rows_per_iteration": rows,
              "max_new_tokens": args.max_new_tokens, "iterations": [],
              "memory_measure": "torch.cuda.max_memory_allocated" if cuda else "VmHWM (peak RSS)"}
    print(f"gpu-check: {report['device']} ({learner.model.device}, {report['dtype']}), {rows} rows per iteration, "
          f"up to {args.max_new_tokens} new tokens each", flush=True)
    try:
        for it in range(args.iterations):
            row = iterate(it, args, sampler, learner, peaks)
            report["iterations"].append(row)
            print(f"  iteration {it + 1}: {row['generated_tokens']} tokens in {row['sample_seconds']:.2f} s "
                  f"({row['tokens_per_second']} tokens/s), GRPO step {row['step_seconds']:.2f} s", flush=True)
    finally:
        learner.close()
    report["sampler"] = f"lean (ChosenLogprobs, no output_logits; {lean['generate_calls']} generate calls checked)"
    if not cuda and not peaks.resets:
        report["memory_measure"] += ", not reset between phases"
    steady = report["iterations"][1:] or report["iterations"]
    report["steady_tokens_per_second"] = round(sum(r["tokens_per_second"] for r in steady) / len(steady), 1)
    report["steady_step_seconds"] = round(sum(r["step_seconds"] for r in steady) / len(steady), 3)
    prompt_tokens = max(r["prompt_tokens"] for r in report["iterations"])
    report["plan_ok"] = compare(report, planned(run_config(args), cuda, prompt_tokens), args.max_over)
    print(f"gpu-check: after the first iteration {report['steady_tokens_per_second']} tokens/s, "
          f"GRPO step {report['steady_step_seconds']} s", flush=True)
    print("gpu-check summary: " + json.dumps(summary(report)), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    if not report["plan_ok"]:
        print(f"gpu-check: the measured peak memory is {report['memory']['peak']['ratio']} x the plan's, more than "
              f"{1 + args.max_over:g} x; fix: correct espl_bench.training.memory's model of this part", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
