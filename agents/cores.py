"""The CPU's cores shared between the learner's RL step and the in-process reflector.

E-SPL reflects while the RL step trains. On a CPU both are torch compute on the same cores, and
each thread left alone runs its OpenMP work on every core: two teams on two cores oversubscribe
them and both slow down (measured on 2 cores: a 30 s training burst and a 6.6 s generation took
40.3 s side by side, more than the 36.6 s of running them one after the other). torch's
intra-op thread count belongs to the calling thread, so :class:`CoreShare` gives each side its
share while both are busy, and every core to whichever is busy alone.

Each side marks itself busy (:meth:`CoreShare.busy`, or :meth:`start` / :meth:`stop` when the
two ends are in different threads), and :func:`share_cores` hooks a model so that every decoder
layer, forward and backward (with gradient checkpointing the backward recomputes the forward),
sets its thread to the share of the role it was hooked for. A thread count is only a scheduling
choice: results do not depend on it beyond floating-point summation order.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

ROLES = ("learner", "reflector")


class CoreShare:
    """How many intra-op threads a role's torch work should use right now, out of ``cores``."""

    def __init__(self, cores: int):
        if cores < 1:
            raise ValueError(f"a core share needs at least one core, got {cores}")
        self.cores = cores
        self._busy = dict.fromkeys(ROLES, 0)
        self._lock = threading.Lock()

    def threads(self, role: str) -> int:
        other = ROLES[1 - ROLES.index(role)]
        if self.cores < 2 or not self._busy[other]:
            return self.cores
        # The reflector decodes (memory-bound: one core is nearly as fast as two); the step
        # computes: it gets the larger half.
        reflector = self.cores // 2
        return reflector if role == "reflector" else self.cores - reflector

    def start(self, role: str) -> None:
        with self._lock:
            self._busy[role] += 1

    def stop(self, role: str) -> None:
        with self._lock:
            self._busy[role] = max(0, self._busy[role] - 1)

    @contextmanager
    def busy(self, role: str) -> Iterator[None]:
        self.start(role)
        try:
            apply(self, role)
            yield
        finally:
            self.stop(role)


def apply(share: CoreShare, role: str) -> None:
    """Set the calling thread's intra-op threads to ``role``'s share (cheap when unchanged)."""
    import torch

    wanted = share.threads(role)
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


def share_cores(model, share: CoreShare, role: str) -> int:
    """Hook ``model``'s decoder layers so that each one's work runs on ``role``'s share of the
    cores; returns how many modules were hooked (the whole model when none is a decoder layer)."""
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")] or [model]

    def before(module, args):
        apply(share, role)

    def after(module, args, output):
        first = output[0] if isinstance(output, tuple) else output
        if getattr(first, "requires_grad", False):
            first.register_hook(lambda grad: apply(share, role))  # the backward through this layer

    for layer in layers:
        layer.register_forward_pre_hook(before)
        layer.register_forward_hook(after)
    return len(layers)
