"""Value baselines: how rollouts are grouped so that TRL's group mean is the paper's V.

TRL subtracts the mean of each block of ``group_size`` consecutive rows (with
``scale_rewards="none"``: no std division), so choosing the baseline means choosing the blocks:

* ``normal`` (the paper's): one block per (program slot, problem), N rows, so the advantage is
  r - V_i with V_i the mean of that program's samples on that problem;
* ``marginalize`` (the reference code's alternative): one block per problem across all M
  programs, M x N rows, so the baseline is the mean over every program on that problem.
"""

from __future__ import annotations

from espl_bench.agents.rollout import Rollout
from espl_bench.method.learning import TrainingSample


def group_size(baseline: str, programs: int, samples: int) -> int:
    return samples if baseline == "normal" else programs * samples


def training_batch(rollouts: list[Rollout], baseline: str, eos_id: int) -> list[TrainingSample]:
    """Order rollouts into baseline groups (see module docstring) as TRL training samples.

    ``rollouts`` carry ``slot`` and ``problem`` tags; an episode that failed before any token was
    generated still fills its row (one EOS token, reward 0) so every group keeps its size.
    """
    if baseline == "normal":
        key = lambda r: (r.spec.tags["slot"], r.spec.tags["problem"], r.spec.tags["sample"])  # noqa: E731
    else:
        key = lambda r: (r.spec.tags["problem"], r.spec.tags["slot"], r.spec.tags["sample"])  # noqa: E731
    batch = []
    for r in sorted(rollouts, key=key):
        if r.prompt_ids and r.completion_ids:
            batch.append(TrainingSample(r.prompt_ids, r.completion_ids, r.logprobs, r.reward, r.env_mask or None))
        else:
            batch.append(TrainingSample(r.prompt_ids or [eos_id], [eos_id], [0.0], 0.0))
    return batch
