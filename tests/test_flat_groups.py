"""--skip-flat-groups: flat groups (equal rewards, no advantage) are left out of the RL step."""

import pytest
import torch

from espl_bench.agents.rollout import EpisodeId, EpisodeSpec, Rollout
from espl_bench.method.advantage import training_batch
from espl_bench.method.learning import TrainingSample, is_flat
from espl_bench.training.trl_learner import TRLLearner
from tests.fakes import learner_settings


def rollout(slot: int, problem: int, sample: int, reward: float) -> Rollout:
    spec = EpisodeSpec("p", "train", problem, EpisodeId(slot=slot, problem=problem, sample=sample))
    return Rollout(spec=spec, prompt_ids=[1, 2, 3], completion_ids=[4, 5], logprobs=[-1.0, -1.0], reward=reward,
                   success=reward > 0)


def test_the_flat_rule_is_equality_of_every_reward():
    assert is_flat([0.0, 0.0, 0.0]) and is_flat([1.0, 1.0]) and is_flat([])
    assert not is_flat([0.0, 1.0]) and not is_flat([0.5, 0.5, 0.0])


@pytest.mark.parametrize("skip", [False, True])
def test_flat_groups_are_counted_and_left_out_only_with_the_option(skip):
    # two groups of two: problem 0 flat (both fail), problem 1 informative
    rollouts = [rollout(0, 0, 0, 0.0), rollout(0, 0, 1, 0.0), rollout(0, 1, 0, 1.0), rollout(0, 1, 1, 0.0)]
    batch = training_batch(rollouts, "normal", eos_id=9, size=2, skip_flat=skip)
    assert (batch.groups, batch.flat, batch.left_out) == (2, 1, int(skip))
    assert len(batch.samples) == 4  # TRL's step keeps its shape
    flat_rows, informative = batch.samples[:2], batch.samples[2:]
    assert all(s.left_out == skip for s in flat_rows) and not any(s.left_out for s in informative)
    if skip:  # a placeholder: one token, masked out of the loss
        assert all(s.completion_ids == [9] and s.env_mask == [0] for s in flat_rows)
    else:
        assert all(s.completion_ids == [4, 5] for s in flat_rows)
    assert [s.reward for s in informative] == [1.0, 0.0]


def _settings(tiny_model, tmp_path):
    return learner_settings(tiny_model, tmp_path, rows_per_step=4, group_size=2, iterations=2, loss_type="dapo",
                            max_new_tokens=4, temperature=1.0)


def _lora(learner) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in learner.model.named_parameters() if "lora_" in n}


def _moved(before, after) -> float:
    return max(float((after[n] - before[n]).abs().max()) for n in before)


@pytest.mark.parametrize("left_out", [False, True])
def test_a_step_of_flat_groups_moves_the_weights_only_without_the_option(tiny_model, tmp_path, left_out):
    """After a real step Adam's momentum moves the weights on a zero gradient too; a step whose
    groups were all left out runs at learning rate 0 and leaves them exactly as they were."""
    learner = TRLLearner(_settings(tiny_model, tmp_path))
    try:
        learner.submit([TrainingSample([1, 2, 3], [4 + i, 5], [-1.0, -1.0], float(i % 2)) for i in range(4)])
        learner.wait()
        before = _lora(learner)
        if left_out:
            flat = [TrainingSample([0], [0], [0.0], 0.0, [0], left_out=True) for _ in range(4)]
        else:
            flat = [TrainingSample([1, 2, 3], [4, 5], [-1.0, -1.0], 0.0) for _ in range(4)]
        learner.submit(flat)
        stats = learner.wait()
        moved = _moved(before, _lora(learner))
    finally:
        learner.close()
    if left_out:
        assert moved == 0.0 and stats["learning_rate"] == 0.0
    else:
        assert moved > 0.0


def _all_left_out_step(tiny_model, tmp_path, skip: bool) -> tuple[int, dict, dict, int]:
    """An informative step, then a step whose groups were all left out: the model calls of the
    second step, and the LoRA weights, the optimizer's state and global_step after it."""
    learner = TRLLearner(_settings(tiny_model, tmp_path))
    learner.skips_left_out_steps = skip
    calls = []
    # every forward of the policy (loss, old log-probabilities) goes through its embeddings
    hook = learner.model.get_input_embeddings().register_forward_hook(lambda *args: calls.append(1))
    try:
        learner.submit([TrainingSample([1, 2, 3], [4 + i, 5], [-1.0, -1.0], float(i % 2)) for i in range(4)])
        learner.wait()
        first = len(calls)
        learner.submit([TrainingSample([0], [0], [0.0], 0.0, [0], left_out=True) for _ in range(4)])
        stats = learner.wait()
        state = learner.trainer.optimizer.state_dict()["state"]
        optimizer = {(i, k): v.clone() if torch.is_tensor(v) else v for i, s in state.items() for k, v in s.items()}
        assert first > 0 and stats["learning_rate"] == 0.0 and learner.checkpoint_dir(2).is_dir()
        return len(calls) - first, _lora(learner), optimizer, learner.trainer.state.global_step
    finally:
        hook.remove()
        learner.close()


def test_an_all_left_out_step_runs_no_forward_and_ends_where_the_full_pass_ends(tiny_model, tmp_path):
    skipped = _all_left_out_step(tiny_model, tmp_path / "skip", skip=True)
    full = _all_left_out_step(tiny_model, tmp_path / "full", skip=False)
    assert skipped[0] == 0 and full[0] > 0  # the full pass calls the model; the skipped step never does
    calls, weights, optimizer, step = skipped
    assert step == full[3] == 2
    assert weights.keys() == full[1].keys() and all(torch.equal(weights[n], full[1][n]) for n in weights)
    assert optimizer.keys() == full[2].keys() and {k[1] for k in optimizer} >= {"step", "exp_avg", "exp_avg_sq"}
    for key, value in optimizer.items():
        assert torch.equal(value, full[2][key]) if torch.is_tensor(value) else value == full[2][key], key
    assert all(float(optimizer[k]) == 2.0 for k in optimizer if k[1] == "step")  # Adam took both steps
