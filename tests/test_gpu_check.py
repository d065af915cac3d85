"""The GPU check script runs end to end (here on CPU, with a tiny model of the same kind): it
samples, takes GRPO steps and writes what it measured."""

import json
import runpy
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def test_the_gpu_check_samples_trains_and_reports(tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "gpu-check.json"
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--model-config", str(tiny_model), "--allow-cpu",
                                      "--iterations", "2", "--problems", "2", "--samples", "2",
                                      "--max-new-tokens", "8", "--micro-batch-size", "2", "--out", str(out)])
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    except SystemExit as stop:
        assert stop.code == 0
    report = json.loads(out.read_text())
    assert [r["iteration"] for r in report["iterations"]] == [1, 2]
    assert all(r["generated_tokens"] > 0 and r["tokens_per_second"] > 0 and r["step_seconds"] > 0
               for r in report["iterations"])
    assert report["rows_per_iteration"] == 4 and report["steady_step_seconds"] > 0


def test_the_gpu_check_refuses_to_run_without_cuda_unless_told(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--model-config", str(tmp_path)])
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    except SystemExit as stop:
        assert stop.code == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_the_gpu_check_refuses_a_machine_whose_packages_are_outside_the_declared_bounds(tmp_path, monkeypatch, capsys):
    """The borrowed machine's own torch/transformers/accelerate are used as they are: one outside
    the bounds pyproject.toml declares is one line and exit 2 before any model loads."""
    from espl_bench.running import versions

    real = versions.metadata.version
    monkeypatch.setattr(versions.metadata, "version", lambda name: "5.0.0" if name == "transformers" else real(name))
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--model-config", str(tmp_path), "--allow-cpu"])
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    except SystemExit as stop:
        assert stop.code == 2
    err = capsys.readouterr().err
    assert err.startswith("gpu-check: ") and "transformers" in err and "5.0.0" in err and err.count("\n") == 1
