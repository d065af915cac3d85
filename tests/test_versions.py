"""The CLI refuses an untested torch/transformers/trl/peft/accelerate with one line (espl/running/versions.py)."""

import logging
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from espl_bench.running import versions
from espl_bench.running.cli import main

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def pyproject_specs() -> dict[str, str]:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return {r.name: str(r.specifier) for r in map(Requirement, deps) if r.name in versions.CHECKED}


def faking(monkeypatch, **found):
    """importlib.metadata reports ``found`` (None: not installed) for those packages, the truth for the rest."""
    real = metadata.version

    def version(name):
        if name not in found:
            return real(name)
        if found[name] is None:
            raise metadata.PackageNotFoundError(name)
        return found[name]

    monkeypatch.setattr(metadata, "version", version)


def test_the_bounds_checked_are_pyprojects_as_installed():
    declared = {name: str(spec) for name, spec in versions.declared().items()}
    assert declared == pyproject_specs(), "the installed metadata is stale; fix: pip install --no-deps -e ."
    assert set(declared) == set(versions.CHECKED)  # every one of the five has a declared bound


def test_the_versions_installed_here_pass():
    versions.check()


def test_pins_are_each_packages_lower_bound():
    pins = dict(pin.split("==") for pin in versions.pins(versions.declared()))
    for name, spec in pyproject_specs().items():
        lows = [clause[2:] for clause in spec.split(",") if clause.startswith(">=")]
        assert pins[name] == lows[0]


@pytest.mark.parametrize(("found", "ok"), [
    ("FLOOR", True), ("FLOOR+cpu", True), ("FLOOR.post1", True), ("0.1", False), ("99.0", None),
])
def test_a_version_at_below_or_above_the_bounds(found, ok, monkeypatch):
    spec = versions.declared()["torch"]
    floor = versions.floor(spec)
    ceiling = next((s.version for s in spec if s.operator == "<"), None)
    faking(monkeypatch, torch=found.replace("FLOOR", floor))
    if ok is None:  # above: refused exactly when there is a ceiling
        ok = ceiling is None
    if ok:
        versions.check()
    else:
        with pytest.raises(versions.UnsupportedVersion, match=r"^torch \S+ is installed but espl-bench needs torch>="):
            versions.check()


def test_the_refusal_names_package_found_needed_and_the_fix(monkeypatch):
    faking(monkeypatch, transformers="5.0.0", peft=None)
    with pytest.raises(versions.UnsupportedVersion) as err:
        versions.check()
    message = str(err.value)
    transformers = "transformers" + ",".join(sorted(str(versions.declared()["transformers"]).split(","), reverse=True))
    assert "transformers 5.0.0 is installed but espl-bench needs " + transformers in message
    assert "peft is not installed" in message
    assert message.endswith(f"fix: python -m pip install '{transformers}' 'peft{versions.declared()['peft']}'")
    assert "\n" not in message


def test_the_cli_refuses_at_start_with_one_line_and_exit_2(monkeypatch, caplog, capsys):
    faking(monkeypatch, trl="1.0.0")
    with caplog.at_level(logging.ERROR):
        assert main(["envs"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("trl 1.0.0 is installed") and "fix: python -m pip install" in errors[0]
    assert capsys.readouterr().out == ""  # refused before the command ran


def test_the_floors_list_names_tests_that_exist():
    root = PYPROJECT.parent
    entries = [line.strip() for line in (root / "tests" / "floors.txt").read_text().splitlines()
               if line.strip() and not line.lstrip().startswith("#")]
    assert entries and "tests/test_versions.py" in entries
    for entry in entries:
        path, _, test = entry.partition("::")
        assert (root / path).is_file(), entry
        assert not test or f"def {test}(" in (root / path).read_text(), entry
