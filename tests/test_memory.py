"""Runs in one process (the test suite, a notebook, `bench`) must not keep each other's models alive."""

import gc

from espl_bench.running.cli import main


def live_models() -> int:
    from transformers import PreTrainedModel

    gc.collect()
    return sum(isinstance(o, PreTrainedModel) for o in gc.get_objects())


def test_finished_runs_free_their_policy_and_reference_models(tiny_model, tmp_path):
    before = live_models()
    for i, method in enumerate(["espl", "evolution", "gepa"]):  # training, frozen, and the GEPA loop
        assert main(["run", "--env", "espl/Arithmetic-v0", "--method", method, "--model", str(tiny_model),
                     "--iterations", "1", "--programs", "2", "--batch-size", "2", "--group-size", "2",
                     "--max-new-tokens", "8", "--reflector-max-tokens", "16", "--eval-problems", "1",
                     "--out", str(tmp_path / f"run{i}")]) == 0
    assert live_models() <= before
