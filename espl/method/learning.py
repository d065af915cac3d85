"""The ``Learner`` seam: RL weight updates on the iteration's rollouts.

Contract:
    ``submit(batch)`` starts one optimizer step on ``batch`` and returns at once; ``wait()``
    blocks until that step is applied (and its checkpoint written) and returns its metrics, a
    flat ``{name: float}`` (``loss``, ``grad_norm``, ``learning_rate``, ``entropy``, and
    ``synced_step`` when a separate engine samples); ``close()`` releases the trainer and is safe
    to call twice. Between ``wait()`` and the next ``submit()`` the policy model is idle, so
    samplers may use it. The batch is grouped: ``group_size`` consecutive samples share one
    baseline (the group mean), so the advantage is ``r - mean(group)``; see
    :mod:`espl_bench.method.advantage` for how groups are formed. ``trainable`` says whether
    ``submit`` changes any weight (the loop skips building a batch when it does not).

Error policy:
    A failure inside the trainer is re-raised from ``wait()``; it is a broken system, not data.
    A batch whose groups are all flat (no advantage) is still a step: TRL applies a zero gradient
    (Adam's moments still move the weights after the first step). With ``--skip-flat-groups``
    the flat groups' rows come as ``left_out`` placeholders (:func:`is_flat` is the rule): they
    carry no tokens into the loss, and a batch of nothing else changes no weight.

Thread safety: one caller (the loop's thread) calls ``submit``/``wait`` in turn; the
implementation may train in a worker thread of its own (:class:`espl_bench.training.trl_learner.TRLLearner`
does, so the update overlaps reflection).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class TrainingSample:
    """One completion to train on: token ids, sampling logprobs and its scalar reward."""

    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    reward: float
    env_mask: list[int] | None = None  # 0 marks environment tokens inside a multi-turn completion
    left_out: bool = False  # a flat group's row under --skip-flat-groups: a placeholder, no loss


def is_flat(rewards) -> bool:
    """Whether a group's rewards are all equal, so that every advantage ``r - mean`` is 0: the one
    rule for the RL step (``--skip-flat-groups``), its per-iteration count and ``espl-bench calibrate``."""
    rewards = list(rewards)
    return not rewards or max(rewards) - min(rewards) <= 1e-9


class Learner(Protocol):
    """Applies RL weight updates to the policy; see the module docstring for the contract."""

    trainable: bool

    def submit(self, batch: list[TrainingSample]) -> None: ...

    def wait(self) -> dict[str, float]: ...

    def close(self) -> None: ...


class FrozenLearner:
    """Frozen weights (the ``evolution``, ``self-reflection`` and ``gepa`` methods): updates are no-ops."""

    trainable = False

    def submit(self, batch: list[TrainingSample]) -> None:
        return None

    def wait(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        return None
