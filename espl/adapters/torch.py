"""torch's CPU feature probes (:mod:`espl_bench.agents.devices`).

Checked against torch 2.13.0 (installed here); the floors CI step runs the same check at 2.11, the
floor of ``torch>=2.11,<2.14`` (``tests/floors.txt``, ``pyproject.toml``).
torch says whether a CPU computes bfloat16 natively only through private probes in ``torch.cpu``
(``_is_avx512_bf16_supported``, ``_is_amx_tile_supported``); there is no public equivalent.
"""

from __future__ import annotations

LIBRARY = "torch"
CHECKED = ">=2.11,<=2.13.0"
BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def cpu_computes_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); a probe torch no longer
    has counts as no (then ``auto`` picks float32 on a CPU: slower at worst, never wrong)."""
    import torch

    return any(getattr(torch.cpu, probe, lambda: False)() for probe in BF16_PROBES)


def missing() -> list[str]:
    """The probes this module relies on that the installed torch no longer has."""
    import torch

    return [f"torch.cpu.{probe}" for probe in BF16_PROBES if not callable(getattr(torch.cpu, probe, None))]
