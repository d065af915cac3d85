"""The GPU check script runs end to end (here on CPU, with a tiny model of the same kind): it
samples on the lean path, takes GRPO steps in the dtype asked, sets its peak memory against
``espl-bench plan``'s and writes what it measured, with only the packages the borrowed GPU machine
has or the check carries importable."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"

# Run in a child whose every distribution is hidden (the path finder does not find it: import
# fails, find_spec answers None, as where it is not installed) unless the GPU machine has it, one
# of those requires it, or the check carries it. The child's own peak RSS is the check's, not pytest's.
CHILD = """
import runpy, sys
from importlib import metadata
from importlib.machinery import PathFinder
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canon
sys.path.insert(0, {scripts!r})
from gpu_check import CARRIED, MACHINE_HAS

allowed, todo = set(), [canon(n) for n in MACHINE_HAS]
while todo:
    name = todo.pop()
    if name in allowed:
        continue
    allowed.add(name)
    try:
        requires = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        continue
    for line in requires:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({{"extra": ""}}):
            todo.append(canon(req.name))
allowed |= {{canon(n) for n in CARRIED}}
hidden = sorted(top for top, dists in metadata.packages_distributions().items()
                if top not in sys.modules and not any(canon(d) in allowed for d in dists))
class Hide(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.partition(".")[0] in hidden else PathFinder.find_spec(name, path, target)
sys.meta_path[sys.meta_path.index(PathFinder)] = Hide
print("hidden:", len(hidden), " ".join(hidden), flush=True)
sys.argv = ["gpu_check.py", *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


def run_check(*flags: str) -> subprocess.CompletedProcess:
    child = CHILD.format(scripts=str(SCRIPT.parent), script=str(SCRIPT))
    return subprocess.run([sys.executable, "-c", child, *flags], check=False, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_gpu_check_samples_trains_and_sets_its_peak_memory_against_the_plan(tiny_model, tmp_path, dtype):
    out = tmp_path / "gpu-check.json"
    proc = run_check("--model-config", str(tiny_model), "--allow-cpu", "--iterations", "2", "--problems", "2",
                     "--samples", "2", "--max-new-tokens", "8", "--micro-batch-size", "2", "--dtype", dtype,
                     "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    hidden = proc.stdout.split("hidden: ", 1)[1].split()
    assert int(hidden[0]) > 0 and "litellm" in hidden  # the run's own dependencies the check must not need
    report = json.loads(out.read_text())
    assert [r["iteration"] for r in report["iterations"]] == [1, 2]
    assert all(r["generated_tokens"] > 0 and r["tokens_per_second"] > 0 and r["step_seconds"] > 0
               for r in report["iterations"])
    assert report["rows_per_iteration"] == 4 and report["steady_step_seconds"] > 0
    assert report["dtype"] == dtype and report["sampler"].startswith("lean") and "2 generate calls" in report["sampler"]
    assert set(report["versions"]) == {"python", "torch", "transformers", "trl", "peft", "accelerate"}
    memory = report["memory"]
    assert memory["peak"]["measured_gib"] >= max(memory["sample"]["measured_gib"], memory["update"]["measured_gib"])
    assert 0 < memory["peak"]["ratio"] <= 1.25 and report["plan_ok"]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("gpu-check summary: "))
    summary = json.loads(line.removeprefix("gpu-check summary: "))
    assert summary["peak_memory_gib"] == report["peak_memory_gib"] and summary["dtype"] == dtype
    assert summary["steady_tokens_per_second"] > 0 and summary["planned_peak_gib"] > 0


def test_a_peak_above_the_plan_by_more_than_allowed_fails_the_check(monkeypatch):
    """The comparison itself: within the margin passes, past it fails (no model needed)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from gpu_check import compare
    finally:
        sys.path.remove(str(SCRIPT.parent))
    plan = {"sample": 800, "update": 1000, "peak": 1000}
    for step_peak, ok in ((1200, True), (1300, False)):
        report = {"iterations": [{"sample_peak_bytes": 700, "step_peak_bytes": step_peak}]}
        assert compare(report, plan, 0.25) is ok
        assert report["memory"]["peak"]["ratio"] == step_peak / 1000 and report["memory"]["sample"]["ratio"] == 0.875


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
