"""The one typed run configuration: the single source for CLI flags and config files.

Every field becomes a ``--flag`` (underscores as dashes) and a key in a YAML or TOML file; the
CLI overrides the file. The fields fall into :data:`SECTIONS` (the task, the loop's sizes, the
policy, serving it, evolution, the reflector, training, evaluation, tracking): ``--help`` lists
them by section, and a file may nest its keys under the section names or list them flat. Invalid values raise :class:`ConfigError` naming the field, the value and
the fix. Defaults follow the paper where it is specific (M=3 programs, 10 problems, 5 samples,
window 10, lambda 2, crossover 0.2, at most 2 ops, 32 words, delta sigma 1, lr 4e-5, no KL, no
std scaling); sampling lengths are sized for a CPU.
"""

from __future__ import annotations

import argparse
import json
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from espl_bench.errors import ConfigError
from espl_bench.method_table import METHODS, MethodSpec, TestRule, resolve_rule

Method = Literal["espl", "rl", "evolution", "self-reflection", "gepa"]
SamplerKind = Literal["transformers", "vllm", "litellm", "trl-vllm"]


class RunConfig(BaseModel):
    """Everything that defines a run; see the module docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str = Field(description="environment id, e.g. espl/Arithmetic-v0 or mypkg:MyTask-v0")
    method: Method = Field("espl", description="espl (evolution + RL), rl (fixed prompt), evolution (frozen weights), self-reflection (one program, mutation only), gepa (the gepa library's optimizer on the same rollout budget, frozen weights)")
    model: str = Field("smollm2-135m", description="policy: smollm2-135m (embedded default), a local HF folder, or a cached hub id")
    sampler: SamplerKind = Field("transformers", description="policy backend: transformers (in-process, deterministic), vllm (a vLLM server, LoRA synced every RL step), litellm (a hosted API model as --model; evolution, self-reflection and evaluation only), trl-vllm (CUDA: the vLLM engine TRL drives itself, whole weights synced every RL step; rl and espl)")
    vllm_url: str | None = Field(None, description="with --sampler vllm: use the vLLM server at this URL instead of starting one (it must serve --model with --enable-lora); with --sampler trl-vllm --trl-vllm-mode server: the `trl vllm-serve` server's URL")
    vllm_python: str | None = Field(None, description="with --sampler vllm: python of the vLLM environment (default: $ESPL_VLLM_PYTHON, then scripts/setup-vllm-env.sh's location)")
    vllm_args: list[str] = Field(default_factory=list, description="with --sampler vllm: extra arguments for the vLLM server we start (JSON list), e.g. '[\"--tensor-parallel-size\", \"2\"]'")
    trl_vllm_mode: Literal["colocate", "server"] = Field("colocate", description="with --sampler trl-vllm: colocate (vLLM inside the training process, sharing its GPUs) or server (a `trl vllm-serve` process on other GPUs, --vllm-url)")
    trl_vllm_args: dict[str, Any] = Field(default_factory=dict, description="with --sampler trl-vllm: JSON object of TRL GRPOConfig vllm_* options, e.g. '{\"vllm_gpu_memory_utilization\": 0.3}'")
    # Placement of the vLLM server we start (--sampler vllm); see espl_bench.training.placement.
    vllm_devices: str | None = Field(None, description="with --sampler vllm: the GPUs of the vLLM server we start, as nvidia-smi numbers them (its CUDA_VISIBLE_DEVICES), e.g. 1,2; default: the GPUs no learner process uses, else the learner's first GPU, shared")
    vllm_gpu_memory: float | None = Field(None, gt=0, le=1, description="with --sampler vllm: the share of each of its GPUs the vLLM server we start may take (--gpu-memory-utilization: weights and KV cache); default 0.9 on GPUs of its own, 0.4 on a GPU it shares with the learner, which keeps the rest")
    vllm_tensor_parallel: int | None = Field(None, ge=1, description="with --sampler vllm: GPUs one copy of the served model is split over (--tensor-parallel-size); default: the most of its GPUs that divide the model's attention heads")
    vllm_startup_timeout: float = Field(300.0, gt=0, description="with --sampler vllm: seconds the vLLM server we start may take to load and answer (a large model on a slow disk takes minutes)")
    max_concurrency: int = Field(64, ge=1, description="requests in flight at once against a vLLM server or API (--sampler vllm/litellm)")
    policy_kwargs: dict[str, Any] = Field(default_factory=dict, description="with --sampler litellm: JSON object of extra litellm arguments for the policy (api_base, ...); keys come from the environment, never from here")
    reflector: str = Field("espl-local/reference", description="litellm model string for reflection (default: the frozen reference policy, in-process); also script:FILE (scripted answers) or replay:RUN_DIR (a recorded run's answers)")
    iterations: int = Field(2, ge=1, description="E-SPL iterations (one RL step each)")
    batch_size: int = Field(10, ge=1, description="problems per iteration (B)")
    group_size: int = Field(5, ge=1, description="samples per (program, problem) pair (N)")
    programs: int = Field(3, ge=1, description="programs selected per iteration (M)")
    seed: int = Field(0, description="seed for every random choice of the run")
    out: str = Field("runs/latest", description="run folder")
    resume: bool = Field(False, description="continue the run in --out from its last committed iteration")
    force: bool = Field(False, description="with --resume: accept a changed config or changed prompt templates")
    env_kwargs: dict[str, Any] = Field(default_factory=dict, description="JSON object of keyword arguments for the env")
    selection: Literal["uniform", "lucb", "ucb", "softmax"] = Field("lucb", description="program selection strategy")
    window: int = Field(10, ge=1, description="select from the K most recent programs")
    max_pool_size: int = Field(100, ge=1, description="FIFO pool capacity")
    ucb_lambda: float = Field(2.0, ge=0, description="lambda in mu +/- lambda sigma")
    baseline: Literal["normal", "marginalize"] = Field("normal", description="normal: mean of the program's group on the problem (paper); marginalize: mean over all programs on the problem")
    crossover_prob: float = Field(0.2, ge=0, le=1, description="probability of a crossover per iteration, besides mutation")
    max_ops: int = Field(2, ge=1, description="at most this many edits per critique (K_ops)")
    revision_fallback: bool = Field(True, description="when the batch revision is unusable after one repair, apply the critiques' validated edits instead of keeping the parent (small reflectors need this)")
    max_words: int = Field(32, ge=4, description="word cap per principle")
    principle_language: str = Field("en", description="the language of the principles (a wordfreq code: en, de, fr, zh, ...): an edit's text is admitted only when most of its words are words of it (espl-bench principles check shows the rule)")
    sigma_inflation: float = Field(1.0, ge=0, description="delta sigma added (in quadrature) to a child's sigma")
    tie_tolerance: float = Field(0.01, ge=0, description="mean rewards this close rank as a tie")
    test_program: Literal["auto", "lcb", "latest", "root"] = Field("auto", description="program scored at test time: auto = the method's rule (espl/evolution lcb, self-reflection latest, rl root, gepa its validation best); lcb = best mu - 2 sigma (ratings from training rollouts only); latest = newest program (the reference code's choice); root = the root program")
    prompt_placement: Literal["system", "user"] = Field("system", description="where the program goes: system (a system message) or user (appended to the first user turn after the problem, the reference code's choice; an empty program sends the bare problem)")
    crossover_requires_win: bool = Field(True, description="cross over only when the iteration's best program won at least one problem outright (the reference code's rule)")
    validation_problems: int = Field(16, ge=0, description="validation problems: the env's validation split (its first N), or the first N train problems held out (at most half) when the env has none; never trained on; select-best and GEPA's candidate selection use them, never the test split")
    gepa_validation_problems: int | None = Field(None, ge=1, description="gepa: problems of the validation split GEPA selects its candidates on (one sample each, paid from the rollout budget); unset: sized from GEPA's own budget guidance, at least 10 (espl/baselines/gepa.py valset_size)")
    eval_every: int = Field(1, ge=0, description="evaluate on the test split every N iterations (0: only at the end)")
    eval_problems: int = Field(4, ge=1, description="test problems per evaluation (the first N of the test split)")
    eval_samples: int = Field(2, ge=1, description="samples per test problem (k of pass@k goes up to this)")
    cell_store: str | None = Field(None, description="folder of base-weights test cells shared by runs (espl-bench "
                                   "bench uses OUT/.cells): a cell another run scored with the same model, env, items, "
                                   "sampling, prompt and code is read, not decoded again (the in-process sampler only)")
    eval_seed: int = Field(0, description="seed of every evaluation sample, combined with the sample's coordinates (split, problem, sample, turn); shared by all methods and run seeds, so equal weights and prompts give equal episodes")
    learning_rate: float = Field(4e-5, gt=0, description="Adam learning rate (paper: 4e-5)")
    lora_rank: int = Field(16, ge=1, description="LoRA rank (paper: 32 on a 671B model)")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo"] = Field("dr_grpo", description="TRL loss type; dr_grpo sums token terms with a constant normaliser, closest to the paper's summed loss")
    scale_rewards: Literal["none", "group", "batch"] = Field("none", description="TRL reward scaling; none = the paper's plain r - V")
    skip_flat_groups: bool = Field(False, description="leave out of the RL step the groups whose rewards are all "
                                   "equal (no advantage), as DAPO's dynamic sampling does, without its refill; a step "
                                   "of only flat groups changes no weight (the paper trains on every group)")
    max_staleness: int = Field(0, ge=0, description="sample iteration t+1's rollouts while step t trains, from "
                               "weights at most this many steps old (0: the on-policy loop, each iteration sampled "
                               "after the previous step); TRL's truncated importance sampling corrects the update "
                               "(--sampler transformers or vllm, methods that train weights)")
    # 2: a TRL step on 8 multi-turn rows of ~900 tokens peaks at 18+ GB with 8 rows per pass
    # and no checkpointing (the 135M model, fp32 logits over a 49k vocabulary), at ~6 GB with 2.
    micro_batch_size: int = Field(2, ge=1, description="rows per forward/backward pass (gradient accumulation covers "
                                  "the rest); raise it on a GPU with memory to spare")
    gradient_checkpointing: bool = Field(True, description="recompute activations in the backward pass: a fraction of "
                                         "the memory on long multi-turn rollouts for about a third more step time")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("auto", description="the policy's dtype for the trainer, the samplers and the frozen reference copy (auto: bfloat16 on a GPU that computes it, float16 on older GPUs; on a CPU bfloat16 only where native, else float32)")
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = Field(None, description="the policy's attention kernels in the trainer, the in-process sampler and the frozen copies (default: transformers' choice, sdpa where the model has it; flash_attention_2 needs the flash-attn package and a GPU)")
    max_context: int | None = Field(None, ge=16, description="the policy's context in tokens, prompt plus reply: a prompt that leaves no room for its reply budget stops the run with one error (default: the model's max_position_embeddings)")
    max_new_tokens: int = Field(128, ge=1, description="tokens per policy reply")
    temperature: float = Field(0.7, gt=0, description="policy sampling temperature")
    top_p: float = Field(0.95, gt=0, le=1, description="policy nucleus sampling")
    reflector_max_tokens: int = Field(384, ge=16, description="the most tokens any reflector reply may have; each step asks for less (a summary 64, an edit call what its schema allows)")
    reflector_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="weights of the in-process reflector (the frozen reference copy): bfloat16 decodes about "
        "twice as fast on CPU (decoding reads every weight per token) at the same likelihood; auto = bfloat16 on a "
        "GPU or a CPU with native bfloat16 (AVX512-BF16, AMX), else float32; the policy always trains and samples in "
        "its own dtype")
    share_cores: bool = Field(True, description="on a CPU, while the in-process reflector decodes beside the RL step, "
                              "split the cores between the two (each torch thread on its share, every core to whichever "
                              "runs alone) instead of both running on all of them; no effect on a GPU or with another "
                              "reflector; the learner's thread count then follows reflection's timing, so a rerun's "
                              "weights may differ at rounding level: --no-share-cores for bit-for-bit reruns")
    reflector_timeout: float = Field(300.0, gt=0, description="seconds per reflector call")
    reflector_retries: int = Field(2, ge=0, description="retries of a reflector call on rate limits, server errors and timeouts (never on bad requests)")
    reflection_deadline: float = Field(1800.0, gt=0, description="seconds for all reflection calls of one iteration; later calls fail and the parent stays")
    preamble: str = Field("You are a careful problem solver.", description="fixed first line of every system prompt")
    report_to: Literal["none", "tensorboard", "wandb", "trackio"] = Field("none", description="experiment tracker for the learner's metrics (through TRL's report_to) and the loop's per-iteration metrics, logged to one run named after the run folder, its files under OUT/tracking; keys and modes from the tracker's own environment variables (WANDB_API_KEY, WANDB_MODE=offline, ...)")
    run_group: str | None = Field(None, description="the tracker's group for this run (espl-bench bench sets it to the grid's suite identity)")

    @property
    def selected_programs(self) -> int:
        """M slots per iteration for every method: rl (one fixed prompt) and self-reflection (a
        population of one) fill all M slots with their program, so every method spends the same
        rollouts per iteration."""
        return self.programs

    @property
    def spec(self) -> MethodSpec:
        """The method as a value (:mod:`espl_bench.method_table`)."""
        return METHODS[self.method]

    @property
    def trains_weights(self) -> bool:
        return self.spec.trains

    @property
    def evolves(self) -> bool:
        """Whether the E-SPL loop mutates and recombines programs."""
        return self.spec.evolves

    @property
    def reflects(self) -> bool:
        """Whether the run calls a reflector at all (GEPA reflects through its own optimizer)."""
        return self.spec.reflects

    @property
    def test_rule(self) -> TestRule:
        """The rule that picks the test-time program: ``--test-program``, else the method's own."""
        return resolve_rule(self.spec, self.test_program)

    @property
    def rollout_budget(self) -> int:
        """Training rollouts E-SPL spends over the run: the equal budget every method gets."""
        return self.iterations * self.programs * self.batch_size * self.group_size

    def identity(self) -> dict:
        """The fields that define the run's results (resume refuses a change to them)."""
        # Where a server runs is not part of a run's identity: a resumed run may use a new one.
        return self.model_dump(exclude={"resume", "force", "out", "iterations", "vllm_url", "vllm_python",
                                        "max_concurrency", "micro_batch_size", "gradient_checkpointing", "cell_store",
                                        "report_to", "run_group", "attn_implementation", *SERVER_PLACEMENT})

    @model_validator(mode="after")
    def _check_combinations(self) -> RunConfig:
        if self.trains_weights and self.group_size < 2:
            raise ValueError(f"--group-size {self.group_size} gives every RL group one sample, so no advantage "
                             f"(r - group mean is 0) and TRL refuses it; fix: --group-size 2 or more for {self.method}")
        if self.spec.test_rule == "validation" and self.test_program != "auto":
            raise ValueError(f"--test-program {self.test_program} does not apply to {self.method} (its programs are "
                             "scored on the validation split, not rated); fix: drop --test-program")
        if self.gepa_validation_problems is not None and self.spec.loop != "gepa":
            raise ValueError(f"--gepa-validation-problems applies to --method gepa only (this run: {self.method}); fix: "
                             "drop it")
        if self.gepa_validation_problems and self.validation_problems and \
                self.gepa_validation_problems > self.validation_problems:
            raise ValueError(f"--gepa-validation-problems {self.gepa_validation_problems} exceeds the validation split "
                             f"(--validation-problems {self.validation_problems}); fix: raise --validation-problems")
        if self.sampler == "litellm" and self.trains_weights:
            raise ValueError(f"--sampler litellm cannot train weights (method {self.method!r}); fix: use --method "
                             "evolution or self-reflection, or --sampler vllm/transformers for rl and espl")
        if self.sampler == "trl-vllm":
            self._check_trl_vllm()
        elif self.trl_vllm_args or self.trl_vllm_mode != "colocate":
            raise ValueError("--trl-vllm-mode/--trl-vllm-args need --sampler trl-vllm; fix: add --sampler trl-vllm or drop them")
        elif self.sampler != "vllm" and (self.vllm_url or self.vllm_python or self.vllm_args or self._placement_set()):
            raise ValueError("--vllm-url/--vllm-python/--vllm-args/--vllm-devices/--vllm-gpu-memory/--vllm-tensor-parallel/"
                             "--vllm-startup-timeout need --sampler vllm; fix: add --sampler vllm or drop them")
        if self.vllm_url and (self.vllm_args or self._placement_set()):
            raise ValueError(f"{', '.join(self._placement_set() or ['--vllm-args'])}: for a server espl-bench starts, "
                             "not one at --vllm-url; fix: drop them (start that server with its own flags)")
        if self.max_staleness:
            self._check_staleness()
        if self.vllm_devices is not None:
            _check_devices(self.vllm_devices)
        if self.max_context is not None and self.max_context <= self.max_new_tokens:
            raise ValueError(f"--max-context {self.max_context} leaves no room for a prompt beside the reply budget "
                             f"(--max-new-tokens {self.max_new_tokens}); fix: raise --max-context or lower --max-new-tokens")
        import wordfreq  # 0.7 s to import: only where a config is checked

        if self.principle_language not in wordfreq.available_languages():
            raise ValueError(f"--principle-language {self.principle_language!r} has no wordfreq word list; fix: one of "
                             f"{', '.join(sorted(wordfreq.available_languages()))}")
        if any(k.lower().endswith("key") for k in self.policy_kwargs):
            raise ValueError("--policy-kwargs must not hold API keys; fix: set the provider's key variable in the environment")
        return self

    def _placement_set(self) -> list[str]:
        """The server placement flags given a value other than their default."""
        fields = type(self).model_fields
        return ["--" + name.replace("_", "-") for name in SERVER_PLACEMENT if getattr(self, name) != fields[name].default]

    def _check_staleness(self) -> None:
        if not self.trains_weights or self.spec.loop != "espl":
            raise ValueError(f"--max-staleness {self.max_staleness} overlaps sampling with the RL step, and method "
                             f"{self.method!r} has none; fix: drop --max-staleness or use --method rl or espl")
        if self.sampler not in ("transformers", "vllm"):
            raise ValueError(f"--max-staleness {self.max_staleness} with --sampler {self.sampler}: TRL pushes the "
                             "weights into its vLLM engine from the trainer thread when the step asks for its batch, "
                             "which can land inside a batch sampled meanwhile; fix: --sampler vllm (adapters "
                             "loaded between batches) or --max-staleness 0")

    def _check_trl_vllm(self) -> None:
        if not self.trains_weights:
            raise ValueError(f"--sampler trl-vllm syncs the weights TRL trains, and method {self.method!r} trains none; "
                             "fix: use --sampler vllm or transformers for frozen-weight methods")
        if self.vllm_python or self.vllm_args or self._placement_set():
            raise ValueError("--vllm-python/--vllm-args/--vllm-devices/--vllm-gpu-memory/--vllm-tensor-parallel/"
                             "--vllm-startup-timeout start a server for --sampler vllm; fix: drop them (with --sampler "
                             "trl-vllm, TRL's options go in --trl-vllm-args, e.g. vllm_gpu_memory_utilization)")
        if (self.trl_vllm_mode == "server") != bool(self.vllm_url):
            raise ValueError("--trl-vllm-mode server needs the `trl vllm-serve` URL in --vllm-url, and colocate takes none; "
                             "fix: add --vllm-url http://HOST:8000 with server mode, or drop --vllm-url")
        bad = sorted(k for k in self.trl_vllm_args if not k.startswith("vllm_") or k in _TRL_VLLM_OWNED)
        if bad:
            raise ValueError(f"--trl-vllm-args may hold TRL's vllm_* options other than {sorted(_TRL_VLLM_OWNED)} "
                             f"(set by the run), not {bad}; fix: remove them")


# The fields by section, in --help's order and as a config file may nest them (each field in
# exactly one; tests/test_cli.py checks). A file's flat keys are read as before.
SECTIONS: dict[str, tuple[str, ...]] = {
    "task": ("env", "env_kwargs", "method", "seed", "out", "resume", "force", "validation_problems"),
    "loop": ("iterations", "batch_size", "group_size", "programs"),
    "policy": ("model", "sampler", "dtype", "attn_implementation", "max_context", "max_new_tokens", "temperature",
               "top_p", "preamble", "prompt_placement"),
    "serving": ("vllm_url", "vllm_python", "vllm_args", "trl_vllm_mode", "trl_vllm_args", "vllm_devices",
                "vllm_gpu_memory", "vllm_tensor_parallel", "vllm_startup_timeout", "max_concurrency", "policy_kwargs"),
    "evolution": ("selection", "window", "max_pool_size", "ucb_lambda", "crossover_prob", "max_ops",
                  "revision_fallback", "max_words", "principle_language", "sigma_inflation", "tie_tolerance",
                  "crossover_requires_win", "test_program", "gepa_validation_problems"),
    "reflector": ("reflector", "reflector_max_tokens", "reflector_dtype", "share_cores", "reflector_timeout",
                  "reflector_retries", "reflection_deadline"),
    "training": ("learning_rate", "lora_rank", "lora_alpha", "loss_type", "scale_rewards", "baseline",
                 "skip_flat_groups", "max_staleness", "micro_batch_size", "gradient_checkpointing"),
    "evaluation": ("eval_every", "eval_problems", "eval_samples", "eval_seed", "cell_store"),
    "tracking": ("report_to", "run_group"),
}


def flatten_sections(data: dict, source: str) -> dict:
    """A config file's keys, flat: ``{section: {field: value}}`` entries opened into their fields."""
    flat: dict = {}
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict):
            for field, inner in value.items():
                field = str(field).replace("-", "_")
                if field not in SECTIONS[key]:
                    home = next((name for name, fields in SECTIONS.items() if field in fields), None)
                    fix = f"move it under [{home}]" if home else "remove it (see espl-bench run --help)"
                    raise ConfigError(f"{source}: option {field!r} is not in section [{key}]; fix: {fix}")
                flat[field] = inner
        else:
            flat[key] = value
    return flat


# Where and how the vLLM server we start runs: no part of a run's identity.
SERVER_PLACEMENT = ("vllm_devices", "vllm_gpu_memory", "vllm_tensor_parallel", "vllm_startup_timeout")


def _check_devices(devices: str) -> None:
    ids = [d.strip() for d in devices.split(",")]
    if not all(ids) or len(set(ids)) != len(ids):
        raise ValueError(f"--vllm-devices {devices!r} is not a list of distinct GPU ids; fix: e.g. --vllm-devices 1,2")


# GRPOConfig's vllm_* options the run sets itself from its own flags.
_TRL_VLLM_OWNED = frozenset({"vllm_mode", "vllm_server_base_url"})


def field_help() -> dict[str, tuple[Any, str]]:
    """``{name: (default, help)}`` for every field, for the CLI."""
    return {name: (None if f.is_required() else f.get_default(call_default_factory=True), f.description or "")
            for name, f in RunConfig.model_fields.items()}


def add_run_flags(parser: argparse.ArgumentParser, exclude: frozenset[str] = frozenset()) -> None:
    """A ``--flag`` for every field but ``exclude`` (unset flags stay out of the namespace), and ``--config``."""
    parser.add_argument("--config", help="YAML or TOML file with any of these options, flat or under the section "
                        "names below (flags override it)")
    helps = field_help()
    for section, names in SECTIONS.items():
        group = parser.add_argument_group(f"{section} options")
        for name in names:
            if name not in exclude:
                _add_flag(group, name, *helps[name])


def _add_flag(parser, name: str, default: Any, help_text: str) -> None:
    flag = "--" + name.replace("_", "-")
    annotation = RunConfig.model_fields[name].annotation
    shown = f"{help_text} (default: {default})" if default not in (None, {}, []) else help_text
    if annotation is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=shown)
    elif _choices(annotation):
        parser.add_argument(flag, choices=_choices(annotation), default=argparse.SUPPRESS, help=shown)
    elif annotation is int or annotation is float:
        parser.add_argument(flag, type=int if annotation is int else float, default=argparse.SUPPRESS, help=shown)
    else:
        parser.add_argument(flag, default=argparse.SUPPRESS, help=shown)


def _choices(annotation) -> tuple:
    """The values of a Literal field, optional ones too (``Literal[...] | None``: unset means None)."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    literals = [a for a in typing.get_args(annotation) if typing.get_origin(a) is typing.Literal]
    return typing.get_args(literals[0]) if literals else ()


def given_values(args: argparse.Namespace, exclude: frozenset[str] = frozenset()) -> dict:
    """The run options ``args`` holds: its ``--config`` file's, overridden by the flags given (but
    ``exclude``: flags of the same name that mean something else there)."""
    values = load_file(args.config) if getattr(args, "config", None) else {}
    values.update({k: v for k, v in vars(args).items() if k in RunConfig.model_fields and k not in exclude})
    return values


def load_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path!r} does not exist; fix: pass an existing .yaml, .yml or .toml file")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {path!r} has an unknown type; fix: use .yaml, .yml or .toml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path!r} is not valid {p.suffix[1:].upper()}: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of options")
    return flatten_sections({k.replace("-", "_"): v for k, v in data.items()}, f"config file {path!r}")


# Fields given as JSON on the command line, with an example for the error message.
JSON_FIELDS = {"env_kwargs": '{"max_terms": 4}', "trl_vllm_args": '{"vllm_gpu_memory_utilization": 0.3}', "policy_kwargs": '{"api_base": "http://127.0.0.1:8000/v1"}',
               "vllm_args": '["--tensor-parallel-size", "2"]'}


def build_config(values: dict) -> RunConfig:
    """Validate ``values`` into a :class:`RunConfig`, turning errors into one clear line."""
    for name, example in JSON_FIELDS.items():
        if isinstance(values.get(name), str):
            try:
                values = {**values, name: json.loads(values[name])}
            except json.JSONDecodeError:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} must be JSON; fix: {flag} '{example}'") from None
    try:
        return RunConfig(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "config"
        flag = "--" + field.replace("_", "-")
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"unknown option {field!r}; fix: remove it (see espl-bench run --help)") from None
        if err["type"] == "value_error" and not err["loc"]:
            raise ConfigError(str(err["msg"]).removeprefix("Value error, ")) from None
        if err["type"] == "missing":
            raise ConfigError(f"{flag} is required; fix: pass {flag} (espl-bench envs lists the ids)") from None
        raise ConfigError(f"{flag}={err.get('input')!r} is invalid: {err['msg']}; fix: see espl-bench run --help") from None
