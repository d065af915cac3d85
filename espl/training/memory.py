"""How much memory a run needs on each device, whether it fits, and the flags that would make it fit.

:func:`make_plan` turns a run's config and a machine (:class:`Machine`) into a :class:`Plan`. The
model's sizes come from its config alone: the model is instantiated on accelerate's meta device
(``init_empty_weights`` + ``AutoModelForCausalLM.from_config``, no weights read) and peft wraps it
with the run's LoRA, so parameter counts are exact for any architecture transformers knows.

What each part holds (bytes; ``b`` = bytes per value of the policy's dtype):

* policy weights: parameters x b (one copy per learner process: data parallel);
* LoRA: adapters, their gradients and Adam's two moments, float32 (peft keeps adapters in float32);
* activations of one micro-batch (rows of prompt + reply tokens), per token and layer
  ``b * (8 h + 2 kv + 4 i) + 8 h`` (the saved inputs of norms, projections, attention and the gated
  MLP; the last term the float32 norm statistics), all layers without gradient checkpointing,
  one layer plus each layer's input with it; plus the reply's logits, ``(3 b + 4)`` per vocabulary
  entry and token (logits, scaled logits, their gradient, float32 log-softmax);
* the in-process sampler's KV cache for one generate batch (at most 32 rows) and its per-step logits;
* the frozen reference copy the default reflector decodes with (when the run reflects in-process),
  and its KV cache for one reflection call per program;
* a vLLM server: it takes its memory share of each of its GPUs up front (weights split over the
  tensor-parallel GPUs, the rest KV cache), and needs at least its weights, one longest sequence's
  KV cache and :data:`VLLM_WORKSPACE`; on a CPU, its weights plus ``VLLM_CPU_KVCACHE_SPACE``;
* the process itself: :data:`CPU_PROCESS` (torch, transformers, TRL, litellm imported; measured; more
  with a CUDA build of torch, :func:`cpu_process_bytes`)
  or :data:`CUDA_CONTEXT` per GPU process.

Sampling and the weight update do not overlap in a run (the loop samples while the learner is
idle); reflection does overlap the update. So a learner device needs its weights, LoRA, the
reference copy, and the larger of (update + reflection) and sampling.

Error policy: a model whose config cannot be read raises :class:`~espl_bench.errors.ModelNotFound`.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from espl_bench.agents.devices import resolve_dtype
from espl_bench.config import RunConfig
from espl_bench.errors import ConfigError, ModelNotFound

log = logging.getLogger(__name__)

GiB = 1024**3
CPU_PROCESS = int(0.65 * GiB)  # peak RSS of `python -c "import espl_bench.running.cli, trl, peft, litellm"` (measured)
# The same with a CUDA build of torch running on a CPU (its CUDA libraries mapped at import):
# 0.83 GiB against the CPU build's 0.54, measured 2026-12-06 with torch 2.11.0+cu130 and 2.13.0+cpu.
CPU_PROCESS_CUDA_BUILD = int(1.0 * GiB)


def cpu_process_bytes() -> int:
    """The process's own memory on a CPU, for the torch build installed here."""
    import torch

    return CPU_PROCESS_CUDA_BUILD if torch.version.cuda else CPU_PROCESS
CUDA_CONTEXT = int(0.6 * GiB)  # CUDA context and cuBLAS workspace of one process
VLLM_WORKSPACE = int(1.5 * GiB)  # vLLM's activation profile and CUDA graphs beside weights and KV cache
VLLM_CPU_KV = 2 * GiB  # VLLM_CPU_KVCACHE_SPACE of the server a run starts
SAMPLER_BATCH = 32  # TransformersSampler's max_batch_size
REFLECTION_TOKENS = 2048  # a reflection call's prompt and answer
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelShape:
    """What the memory model reads from a model's config (and its meta-device instance)."""

    name: str
    params: int
    lora_per_rank: int  # LoRA parameters (all-linear) per unit of rank
    layers: int
    hidden: int
    intermediate: int
    kv_dim: int  # key/value heads x head size
    heads: int
    vocab: int
    context: int


@dataclass(frozen=True)
class Machine:
    """The devices a plan is for: ``gpus`` GPUs of ``gpu_bytes`` each (0: the CPU), the host's RAM,
    and the learner processes on it (``accelerate launch --num_processes``)."""

    gpus: int = 0
    gpu_bytes: int = 80 * GiB
    host_bytes: int = 0
    processes: int = 1
    gpu_bf16: bool = True  # whether its GPUs compute bfloat16 (Ampere and newer)

    def dtype(self, setting: str) -> str:
        """The concrete dtype ``setting`` means on this machine's devices."""
        if self.gpus and setting == "auto":
            return "bfloat16" if self.gpu_bf16 else "float16"
        return resolve_dtype(setting, "cuda" if self.gpus else "cpu")

    @classmethod
    def this_one(cls, processes: int = 1) -> Machine:
        import torch

        from espl_bench.agents.devices import cuda_bf16

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        memory = torch.cuda.get_device_properties(0).total_memory if gpus else 80 * GiB
        return cls(gpus, memory, host_memory(), processes, cuda_bf16() if gpus else True)


def host_memory() -> int:
    """This machine's RAM in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True)
class Part:
    """Bytes held for ``name``; ``phase`` "update" or "sample" when held only in that phase of a step."""

    name: str
    bytes: int
    phase: str = ""


@dataclass(frozen=True)
class Tenant:
    """One process's parts on a device and what it may use there (its share, or the whole device)."""

    name: str
    budget: int
    parts: tuple[Part, ...]

    @property
    def need(self) -> int:
        """Its peak: what it always holds plus the larger of its update and its sampling."""
        always = sum(p.bytes for p in self.parts if not p.phase)
        return always + max(sum(p.bytes for p in self.parts if p.phase == phase) for phase in ("update", "sample"))


@dataclass(frozen=True)
class DevicePlan:
    device: str  # "cpu" or "cuda:N" (the machine's GPU id)
    capacity: int
    tenants: tuple[Tenant, ...]

    @property
    def need(self) -> int:
        return sum(t.need for t in self.tenants)

    @property
    def fits(self) -> bool:
        return self.need <= self.capacity and all(t.need <= t.budget for t in self.tenants)


@dataclass(frozen=True)
class Plan:
    """A run's memory on each device; ``advice`` are the flags that make it fit (empty when it does)."""

    model: str
    params: int
    dtype: str
    rows: str  # the sequences the estimate assumes
    devices: tuple[DevicePlan, ...]
    advice: tuple[str, ...] = ()
    advice_fits: bool = True
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fits(self) -> bool:
        return all(d.fits for d in self.devices)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        devices = [{**asdict(d), "need": d.need, "fits": d.fits,
                    "tenants": [{**asdict(t), "need": t.need} for t in d.tenants]} for d in self.devices]
        return {**asdict(self), "devices": devices, "fits": self.fits}


def read_config(model: str):
    """The transformers config of ``model``: the embedded default, a model folder, a hub id in the
    local cache, or a bare ``config.json`` file."""
    from transformers import AutoConfig

    from espl_bench.training.models import resolve_model

    path = Path(model).expanduser()
    source = str(path) if path.is_file() else resolve_model(model)
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"cannot read the config of model {model!r} ({str(exc).splitlines()[0]}); fix: pass a "
                            "model folder, a config.json file or a hub id already in the local cache") from None


@functools.lru_cache(maxsize=8)
def model_shape(model: str) -> ModelShape:
    """The sizes of ``model`` from its config, counted on the meta device (no weights are read)."""
    import warnings

    from accelerate import init_empty_weights
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = read_config(model)
    with init_empty_weights():
        meta = AutoModelForCausalLM.from_config(config)
    meta.tie_weights()  # from_config leaves tied embeddings untied on the meta device (transformers 5)
    params = sum(p.numel() for p in meta.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's deprecation notes about transformers names
        lora = get_peft_model(meta, LoraConfig(r=1, lora_alpha=1, target_modules="all-linear", task_type="CAUSAL_LM"))
    per_rank = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    return ModelShape(name=model, params=params, lora_per_rank=per_rank, layers=text.num_hidden_layers,
                      hidden=text.hidden_size, intermediate=text.intermediate_size, kv_dim=kv_heads * head_dim,
                      heads=text.num_attention_heads, vocab=text.vocab_size,
                      context=getattr(text, "max_position_embeddings", 0) or 0)


PROMPT_TOKENS = 256  # the prompt (and earlier turns) of a row the plan assumes unless told


@dataclass(frozen=True)
class Rows:
    """The sequences a step trains on and samples: ``tokens`` = prompt + reply, ``reply`` of them new."""

    tokens: int
    reply: int
    micro: int
    per_call: int  # rows of one in-process generate batch

    @classmethod
    def of(cls, cfg: RunConfig, shape: ModelShape, prompt_tokens: int, processes: int) -> Rows:
        limit = cfg.max_context or shape.context or prompt_tokens + cfg.max_new_tokens
        tokens = min(prompt_tokens + cfg.max_new_tokens, limit)
        rows = cfg.programs * cfg.batch_size * cfg.group_size
        return cls(tokens, min(cfg.max_new_tokens, tokens), min(cfg.micro_batch_size, max(rows // processes, 1)),
                   min(rows, SAMPLER_BATCH))


def kv_cache(shape: ModelShape, width: int, rows: int, tokens: int) -> int:
    """Keys and values of ``rows`` sequences of ``tokens`` in ``width``-byte values."""
    return rows * tokens * shape.layers * 2 * shape.kv_dim * width


def activations(shape: ModelShape, width: int, rows: Rows, checkpointing: bool) -> int:
    """What one micro-batch's forward keeps for its backward pass (see the module docstring)."""
    h, i = shape.hidden, shape.intermediate
    layer = width * (8 * h + 2 * shape.kv_dim + 4 * i) + 8 * h
    kept = (shape.layers * width * h + layer) if checkpointing else shape.layers * layer
    logits = rows.reply * shape.vocab * (3 * width + 4)
    return rows.micro * (rows.tokens * kept + logits)


def learner_parts(cfg: RunConfig, shape: ModelShape, dtype: str, rows: Rows, leader: bool) -> list[Part]:
    """One learner process's parts; the leader also samples in-process (transformers sampler)."""
    width = DTYPE_BYTES[dtype]
    parts = [Part(f"policy weights ({dtype})", shape.params * width)]
    if cfg.trains_weights:
        lora = shape.lora_per_rank * cfg.lora_rank
        parts += [Part(f"LoRA r{cfg.lora_rank}: weights, gradients, Adam (float32)", lora * 16),
                  Part(f"activations: micro-batch {rows.micro} x {rows.tokens} tokens, checkpointing "
                       f"{'on' if cfg.gradient_checkpointing else 'off'}",
                       activations(shape, width, rows, cfg.gradient_checkpointing), "update")]
    if leader and cfg.sampler == "transformers":
        parts.append(Part(f"sampler: KV cache of {rows.per_call} rows x {rows.tokens} tokens and their logits",
                          kv_cache(shape, width, rows.per_call, rows.tokens) + rows.per_call * shape.vocab * 8, "sample"))
    return parts


def reference_parts(cfg: RunConfig, shape: ModelShape, policy_dtype: str, device: str) -> list[Part]:
    """The frozen reference copy the default reflector decodes with in-process, when the run makes one."""
    from espl_bench.agents.reflector import DEFAULT_REFLECTOR

    if not (cfg.reflects and cfg.reflector == DEFAULT_REFLECTOR and cfg.sampler in ("transformers", "trl-vllm")):
        return []
    dtype = resolve_dtype(cfg.reflector_dtype, device)  # concrete already in a plan (make_plan)
    if not cfg.trains_weights and cfg.sampler == "transformers" and dtype == policy_dtype:
        return []  # the frozen policy is the reference
    width, calls = DTYPE_BYTES[dtype], cfg.programs
    return [Part(f"reference copy for the reflector ({dtype})", shape.params * width),
            Part(f"reflector: KV cache of {calls} calls x {REFLECTION_TOKENS} tokens",
                 kv_cache(shape, width, calls, REFLECTION_TOKENS), "update")]


VLLM_CPU_PROCESS = int(1.5 * GiB)  # a vLLM CPU server process beside its weights and KV cache (estimate)


def vllm_parts(shape: ModelShape, dtype: str, tensor_parallel: int, context: int, budget: int | None) -> list[Part]:
    """A vLLM engine's parts: on a GPU it fills its ``budget`` (its share) with KV cache after its
    weights and workspace, and needs room for one ``context``-token sequence; on the CPU (budget
    None) its KV space is fixed."""
    width = DTYPE_BYTES[dtype]
    weights = Part(f"served weights ({dtype}{f', 1/{tensor_parallel} each' if tensor_parallel > 1 else ''})",
                   shape.params * width // tensor_parallel)
    one = kv_cache(shape, width, 1, context) // tensor_parallel
    if budget is None:
        return [weights, Part("KV cache (VLLM_CPU_KVCACHE_SPACE)", VLLM_CPU_KV), Part("vLLM server process", VLLM_CPU_PROCESS)]
    rest = budget - weights.bytes - VLLM_WORKSPACE
    return [weights, Part("vLLM workspace: CUDA context, activations, CUDA graphs", VLLM_WORKSPACE),
            Part(f"KV cache: the rest of its share (one {context}-token sequence needs {one / GiB:.2f} GiB)", max(rest, one))]


def _learner_procs(cfg: RunConfig, machine: Machine) -> int:
    """Processes holding the policy: the learner's, or one frozen in-process policy, or none (vLLM)."""
    if cfg.trains_weights:
        return machine.processes
    return int(cfg.sampler == "transformers")


def _process(cfg: RunConfig, shape: ModelShape, dtype: str, rows: Rows, rank: int, holds: bool, device: str,
             budget: int, base: Part) -> Tenant:
    """Process ``rank``'s tenant (rank 0 also runs the loop, the sampler and the reflector); ``holds``:
    whether it holds the policy."""
    parts = learner_parts(cfg, shape, dtype, rows, leader=rank == 0) if holds else []
    if rank == 0:
        parts += reference_parts(cfg, shape, dtype, device)
    if device == "cpu" and cfg.trains_weights and holds:
        # glibc's heap keeps a step's freed buffers: with MALLOC_MMAP_THRESHOLD_=65536 the RSS of a
        # SmolLM2 step rose 0.26 GiB over its weights, with the default 0.65 (measured).
        step = sum(part.bytes for part in parts if part.phase == "update")
        parts.append(Part("heap glibc keeps from the step's freed buffers (about the step again)", step, "update"))
    name = "espl-bench rank 0 (loop, sampler, reflector)" if rank == 0 else f"learner rank {rank}"
    return Tenant(name, budget, (*parts, base))


def cpu_devices(cfg: RunConfig, shape: ModelShape, machine: Machine, rows: Rows) -> tuple[DevicePlan, ...]:
    """Every process on the host's RAM: rank 0, the other learner processes, a vLLM CPU server."""
    from espl_bench.training.placement import place_vllm

    dtype, ram = cfg.dtype, machine.host_bytes
    base = Part("process: Python, torch, transformers, TRL, litellm", cpu_process_bytes())
    procs = _learner_procs(cfg, machine)
    tenants = [_process(cfg, shape, dtype, rows, rank, rank < procs, "cpu", ram, base) for rank in range(max(procs, 1))]
    if cfg.sampler == "vllm" and not cfg.vllm_url:
        placed = place_vllm(cfg, [], procs)
        tenants.append(Tenant("vLLM server (CPU)", ram, tuple(vllm_parts(shape, placed.dtype, 1, _context(cfg, shape), None))))
    return (DevicePlan("cpu", ram, tuple(tenants)),)


def _context(cfg: RunConfig, shape: ModelShape) -> int:
    return cfg.max_context or shape.context


def gpu_devices(cfg: RunConfig, shape: ModelShape, machine: Machine, rows: Rows) -> tuple[DevicePlan, ...]:
    """Each GPU's tenants: learner process i on GPU i, the run's vLLM server on its placement, TRL's
    colocated engine inside each learner process."""
    from espl_bench.training.placement import place_vllm

    ids, cap, procs = [str(i) for i in range(machine.gpus)], machine.gpu_bytes, _learner_procs(cfg, machine)
    if procs > machine.gpus:
        raise ConfigError(f"{procs} learner processes need as many GPUs, and the plan has {machine.gpus}; "
                          "fix: raise --gpus or lower --processes")
    dtype = cfg.dtype
    placed = place_vllm(cfg, ids, procs, shape.heads) if cfg.sampler == "vllm" and not cfg.vllm_url else None
    trl_share = float(cfg.trl_vllm_args.get("vllm_gpu_memory_utilization", 0.3))
    devices = []
    for index, gpu in enumerate(ids):
        tenants = []
        if placed and gpu in placed.devices:
            share = int((placed.gpu_memory or 0.0) * cap)  # a GPU placement always sets it
            parts = vllm_parts(shape, placed.dtype, placed.tensor_parallel, placed.max_model_len or shape.context, share)
            tenants.append(Tenant("vLLM server", share, tuple(parts)))
        if cfg.sampler == "trl-vllm" and cfg.trl_vllm_mode == "colocate" and index < procs:
            share = int(trl_share * cap)
            tenants.append(Tenant("vLLM engine (TRL colocate)", share,
                                  tuple(vllm_parts(shape, dtype, 1, _context(cfg, shape), share))))
        if index < procs:
            free = cap - sum(t.budget for t in tenants)
            tenants.insert(0, _process(cfg, shape, dtype, rows, index, True, "cuda", free, Part("CUDA context", CUDA_CONTEXT)))
        if tenants:
            devices.append(DevicePlan(f"cuda:{gpu}", cap, tuple(tenants)))
    return tuple(devices)


def make_plan(cfg: RunConfig, machine: Machine, prompt_tokens: int = PROMPT_TOKENS, advise: bool = True) -> Plan:
    """The memory plan of ``cfg`` on ``machine`` (see the module docstring), with advice when it does not fit."""
    if cfg.sampler == "litellm":
        return Plan(cfg.model, 0, "-", "-", (), notes=("the policy is a hosted model: it needs no local memory",))
    shape = model_shape(cfg.model)
    rows = Rows.of(cfg, shape, prompt_tokens, max(machine.processes, 1))
    # Concrete dtypes for the planned machine (not this one); model_copy keeps them unvalidated.
    dtype = machine.dtype(cfg.dtype)
    concrete = cfg.model_copy(update={"dtype": dtype, "reflector_dtype": machine.dtype(cfg.reflector_dtype)})
    devices = (gpu_devices if machine.gpus else cpu_devices)(concrete, shape, machine, rows)
    plan = Plan(cfg.model, shape.params, dtype, f"{prompt_tokens} prompt + {rows.reply} reply tokens", devices)
    if plan.fits or not advise:
        return plan
    flags, fixed = advice(cfg, machine, prompt_tokens)
    return replace(plan, advice=tuple(flags), advice_fits=fixed.fits)


def overflow(plan: Plan) -> int:
    """Bytes over every limit of ``plan`` (0 when it fits)."""
    over = 0
    for device in plan.devices:
        over += max(device.need - device.capacity, 0) + sum(max(t.need - t.budget, 0) for t in device.tenants)
    return over


def _halvings(value: int, low: int) -> list[int]:
    return [value >> k for k in range(1, 12) if value >> k >= low]


def _options(cfg: RunConfig, machine: Machine, prompt_tokens: int) -> list[tuple[str, list]]:
    """The settings advice may change, each with its candidate values, gentlest first."""
    options: list[tuple[str, list]] = [("dtype", ["bfloat16"]), ("gradient_checkpointing", [True]),
                                       ("micro_batch_size", _halvings(cfg.micro_batch_size, 1))]
    if cfg.sampler == "vllm" and not cfg.vllm_url and machine.gpus:
        options.append(("vllm_gpu_memory", [round(0.05 * k, 2) for k in range(4, 19)]))
    if cfg.sampler in ("vllm", "trl-vllm"):
        options.append(("max_context", [1 << k for k in range(20, 8, -1) if 1 << k >= prompt_tokens + cfg.max_new_tokens]))
    options += [("max_new_tokens", _halvings(cfg.max_new_tokens, 32)), ("lora_rank", _halvings(cfg.lora_rank, 4))]
    return [(name, values) for name, values in options if values and not (name == "dtype" and cfg.dtype == "bfloat16")]


def advice(cfg: RunConfig, machine: Machine, prompt_tokens: int = PROMPT_TOKENS) -> tuple[list[str], Plan]:
    """The flags that bring ``cfg`` within ``machine``'s memory, found greedily: each setting in turn
    takes the candidate value that leaves the least overflow, if it leaves less; stops once it fits.
    Returns the flags and the plan with them (which may still not fit)."""
    flags: dict[str, str] = {}
    current = make_plan(cfg, machine, prompt_tokens, advise=False)
    for name, values in _options(cfg, machine, prompt_tokens):
        if current.fits:
            break
        trials = [(overflow(plan), index, value, plan) for index, value in enumerate(values)
                  for plan in [make_plan(cfg.model_copy(update={name: value}), machine, prompt_tokens, advise=False)]]
        best, _, value, plan = min(trials, key=lambda t: t[:2])
        if best < overflow(current):
            cfg, current = cfg.model_copy(update={name: value}), plan
            flags[name] = "--" + name.replace("_", "-") + ("" if value is True else f" {value}")
    return list(flags.values()), current


def gib(n: int) -> str:
    return f"{n / GiB:8.2f}"


def render(plan: Plan) -> str:
    """The plan as a table: one line per part, each tenant's and device's total against its limit."""
    if not plan.devices:
        return "\n".join(plan.notes) + "\n"
    lines = [f"memory plan: {plan.model} ({plan.params / 1e9:.2f}B parameters) in {plan.dtype}; rows of {plan.rows}",
             f"{'device':<8} {'part':<78} {'GiB':>8}"]
    for device in plan.devices:
        for tenant in device.tenants:
            lines.append(f"{device.device:<8} {tenant.name}")
            for part in tenant.parts:
                when = f" [{part.phase} only]" if part.phase else ""
                lines.append(f"{'':<8}   {(part.name + when)[:75]:<75} {gib(part.bytes)}")
            verdict = "ok" if tenant.need <= tenant.budget else "OVER"
            lines.append(f"{'':<8}   {'peak, of its ' + gib(tenant.budget).strip() + ' GiB: ' + verdict:<75} {gib(tenant.need)}")
        state = "fits" if device.fits else "OVER" if device.need > device.capacity else "fits, a share is OVER"
        lines.append(f"{device.device:<8} {'total of ' + gib(device.capacity).strip() + ' GiB: ' + state:<78} {gib(device.need)}")
    lines.append(f"fits: {'yes' if plan.fits else 'no'}")
    if plan.advice:
        lines.append(f"to fit: {' '.join(plan.advice)}" + ("" if plan.advice_fits else " (still short: see the notes)"))
    lines += list(plan.notes)
    return "\n".join(lines) + "\n"


# A run is refused only when it needs this much more than a device has: the estimate may be off by
# a quarter (it assumes rows of PROMPT_TOKENS prompt tokens), so nearer misses are a warning.
CLEAR_MARGIN = 1.25


def check_fits(cfg: RunConfig, processes: int = 1) -> Plan | None:
    """Refuse ``cfg`` on this machine when it clearly cannot fit (:data:`CLEAR_MARGIN`), with the
    plan's advice, as one :class:`ConfigError` line; warn when it may not. None for a hosted policy."""
    if cfg.sampler == "litellm":
        return None
    machine = Machine.this_one(processes)
    plan = make_plan(cfg, machine)
    if plan.fits:
        return plan
    device, tenant = max(((d, t) for d in plan.devices for t in d.tenants), key=lambda dt: dt[1].need / dt[1].budget)
    where = "RAM" if device.device == "cpu" else device.device
    short = (f"{tenant.name} needs {tenant.need / GiB:.1f} GiB of the {tenant.budget / GiB:.1f} GiB it has on {where} "
             f"(espl-bench plan shows each part, for rows of {plan.rows})")
    fix = " ".join(plan.advice) if plan.advice_fits and plan.advice else "a larger device, or more GPUs with fsdp.yaml"
    if tenant.need > CLEAR_MARGIN * tenant.budget:
        raise ConfigError(f"this run cannot fit: {short}; fix: {fix}")
    log.warning("this run may not fit: %s; to fit: %s", short, fix)
    return plan
