"""Value baselines: how rollouts are grouped so that TRL's group mean is the paper's V.

TRL subtracts the mean of each block of ``group_size`` consecutive rows (with
``scale_rewards="none"``: no std division), so choosing the baseline means choosing the blocks:

* ``normal`` (the paper's): one block per (program slot, problem), N rows, so the advantage is
  r - V_i with V_i the mean of that program's samples on that problem;
* ``marginalize`` (the reference code's alternative): one block per problem across all M
  programs, M x N rows, so the baseline is the mean over every program on that problem.
"""

from __future__ import annotations

from dataclasses import dataclass

from espl_bench.agents.rollout import Rollout
from espl_bench.method.learning import TrainingSample, is_flat


def group_size(baseline: str, programs: int, samples: int) -> int:
    return samples if baseline == "normal" else programs * samples


@dataclass(frozen=True)
class TrainingBatch:
    """A step's rows in baseline groups, and how many of the groups were flat (:func:`is_flat`)."""

    samples: list[TrainingSample]
    groups: int
    flat: int
    left_out: int  # flat groups replaced by placeholders (--skip-flat-groups), else 0


def training_batch(rollouts: list[Rollout], baseline: str, eos_id: int, size: int,
                   skip_flat: bool = False) -> TrainingBatch:
    """Order rollouts into baseline groups of ``size`` rows (see module docstring) as TRL samples.

    ``rollouts`` carry ``slot``, ``problem`` and ``sample`` in their ``spec.id``; an episode that failed before any token was
    generated still fills its row (one EOS token, reward 0) so every group keeps its size. With
    ``skip_flat`` a flat group's rows become one-token placeholders marked ``left_out``: TRL's
    step keeps its shape (rows per step are fixed), but those rows carry no loss, no tokens into
    a token-normalised loss, and little compute (DAPO's dynamic sampling refills the batch with
    new groups instead; this does not, so the batch shrinks).
    """
    if baseline == "normal":
        key = lambda r: (r.spec.id.slot, r.spec.id.problem, r.spec.id.sample)  # noqa: E731
    else:
        key = lambda r: (r.spec.id.problem, r.spec.id.slot, r.spec.id.sample)  # noqa: E731
    ordered = sorted(rollouts, key=key)
    samples, flat, left_out = [], 0, 0
    for start in range(0, len(ordered), size):
        group = ordered[start:start + size]
        if is_flat(r.reward for r in group):
            flat += 1
            if skip_flat:
                left_out += 1
                samples += [TrainingSample([eos_id], [eos_id], [0.0], 0.0, [0], left_out=True) for _ in group]
                continue
        for r in group:
            if r.prompt_ids and r.completion_ids:
                samples.append(TrainingSample(r.prompt_ids, r.completion_ids, r.logprobs, r.reward, r.env_mask or None))
            else:
                samples.append(TrainingSample(r.prompt_ids or [eos_id], [eos_id], [0.0], 0.0))
    return TrainingBatch(samples, -(-len(ordered) // size) if size else 0, flat, left_out)
