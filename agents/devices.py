"""Where a model runs and in which precision: one rule for every part that loads a copy.

The policy's dtype (``--dtype``) applies to the trainer, the in-process sampler, the frozen
reference copy and a vLLM server alike, so that the sampler's and the trainer's log-probabilities
come from the same arithmetic. :func:`resolve_dtype` turns the setting into a concrete dtype for
a device; :func:`native_bf16_cpu` is the one place that asks torch whether this CPU computes
bfloat16 natively (torch exposes it only through private probes: :mod:`espl_bench.adapters.torch`).
"""

from __future__ import annotations

from typing import Literal

DtypeSetting = Literal["auto", "bfloat16", "float16", "float32"]
DTYPES: tuple[str, ...] = ("bfloat16", "float16", "float32")


def device_kind() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); without it torch emulates
    bfloat16, slower than float32."""
    from espl_bench.adapters import torch as torch_internals

    return torch_internals.cpu_computes_bf16()


def cuda_bf16() -> bool:
    """Whether the GPU torch sees computes bfloat16 (Ampere and newer)."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def resolve_dtype(setting: str, device: str | None = None, *, cpu_auto: str | None = None) -> str:
    """The concrete dtype ``setting`` means on ``device`` (default: this machine's).

    ``auto``: bfloat16 on a GPU that computes it, float16 on an older GPU; on a CPU, ``cpu_auto``
    when given, else bfloat16 where the CPU computes it natively and float32 where it would be
    emulated. An explicit dtype is returned as it is.
    """
    if setting != "auto":
        if setting not in DTYPES:
            raise ValueError(f"unknown dtype {setting!r}; fix: one of auto, {', '.join(DTYPES)}")
        return setting
    device = device or device_kind()
    if device == "cuda":
        return "bfloat16" if cuda_bf16() else "float16"
    if cpu_auto is not None:
        return cpu_auto
    return "bfloat16" if native_bf16_cpu() else "float32"


def model_kwargs(dtype: str, attn_implementation: str | None = None) -> dict:
    """``from_pretrained`` keyword arguments for a policy copy in ``dtype`` (a concrete name) with
    ``attn_implementation`` (None: transformers' own choice, sdpa where the model supports it)."""
    kwargs: dict = {"dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def check_attention(attn_implementation: str | None) -> None:
    """Refuse, in one line, an attention implementation this machine cannot run (before any load:
    transformers would fail deep inside ``from_pretrained`` with a traceback)."""
    import importlib.util

    from espl_bench.errors import ConfigError

    if attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError("--attn-implementation flash_attention_2 needs the flash-attn package (CUDA only); fix: "
                          "pip install flash-attn, or use --attn-implementation sdpa")
