"""Third-party internals stay in their adapters (espl_bench.adapters), and the adapters still fit
the installed libraries.

The walk reads every module of the package (the folders pyproject.toml maps) with ``ast``. Outside
the adapters it refuses: ``x._name`` where ``x`` is not ``self``/``cls`` and ``_name`` is not defined
in that module (a private name is the business of the module that defines it: a third-party one,
or another of our modules' one), a string naming such a name (``getattr(x, "_name")``), ``from m import _name``
and imports of private modules (``m._sub``), and assignments to a third-party module's attributes
(process-wide state). The standard library's underscore names (``os._exit``) are documented API.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "espl_bench"
ADAPTERS = f"{PACKAGE}.adapters"
# Every private name of a third-party library the package uses, by adapter (one per library).
# A new touch goes into its library's adapter, here, and into that adapter's missing().
PRIVATE_TOUCHES = {
    "trl": {"_last_loaded_step"},
    "torch": {"_is_avx512_bf16_supported", "_is_amx_tile_supported"},
    "litellm": {"_hidden_params"},
    "textarena": {"_get_percentage_completion"},
}


def is_private(name: str) -> bool:
    """``_name`` (not ``_`` alone, not a ``__dunder__``)."""
    return name.startswith("_") and name.strip("_") != "" and not (name.startswith("__") and name.endswith("__"))


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name, from the folders pyproject.toml maps."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    found = {}
    for package, folder in mapping.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found.setdefault(name, path)  # espl/ holds no folder another mapping owns
    return found


def defined_names(tree: ast.AST) -> set[str]:
    """Names a module defines: functions, classes, assigned names, and ``self.x``/``cls.x`` it sets."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
              and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            names.add(node.attr)
    return names


def imported_modules(tree: ast.AST) -> dict[str, str]:
    """Local name -> top-level package, for each ``import x`` / ``import x.y as z`` in the module."""
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound[alias.asname or alias.name.split(".")[0]] = alias.name.split(".")[0]
    return bound


def touches(path: Path) -> list[tuple[int, str]]:
    """(line, what) for each private or process-wide touch in the module at ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own, imported = defined_names(tree), imported_modules(tree)
    stdlib = {name for name, top in imported.items() if top in sys.stdlib_module_names}
    third_party = {name for name, top in imported.items() if top not in sys.stdlib_module_names and top != PACKAGE}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            base = node.value.id if isinstance(node.value, ast.Name) else None
            if is_private(node.attr) and node.attr not in own and base not in {"self", "cls", *stdlib}:
                found.append((node.lineno, ast.unparse(node)))
            elif isinstance(node.ctx, ast.Store) and base in third_party:
                found.append((node.lineno, f"{ast.unparse(node)} = (a third-party module's state)"))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier()
              and is_private(node.value) and node.value not in own):
            found.append((node.lineno, repr(node.value)))  # getattr(x, "_name"), a list of probes' names
        elif isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names if is_private(a.name)]
            if names or any(is_private(part) for part in (node.module or "").split(".")):
                found.append((node.lineno, f"from {node.module} import {', '.join(names or ['...'])}"))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if any(map(is_private, a.name.split(".")))]
    return found


def private_names_in(path: Path) -> set[str]:
    """The private names an adapter touches: attributes it does not define, and the strings it
    names them by (``getattr(x, NAME)``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = defined_names(tree)
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and is_private(n.attr)}
    names |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
              and n.value.isidentifier() and is_private(n.value)}
    return names - own


def adapters() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(importlib.import_module(ADAPTERS).__path__))


def test_private_names_are_touched_only_in_the_adapters():
    outside = {name: path for name, path in modules().items() if not name.startswith(ADAPTERS)}
    assert len(outside) > 50  # the walk found the package (espl/, envs/, agents/, leaderboards/)
    found = [f"{path.relative_to(ROOT)}:{line}: {what}" for path in outside.values() for line, what in touches(path)]
    assert not found, ("private or process-wide touches outside espl_bench.adapters; route each through its "
                       "library's adapter (or make our own name public):\n" + "\n".join(found))


def test_no_module_imports_another_modules_private_names():
    found = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE):
                found += [f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import {a.name}"
                          for a in node.names if is_private(a.name)]
    assert not found, "\n".join(found)


def test_the_adapters_list_every_private_touch():
    # one adapter per library, and what each touches is exactly what PRIVATE_TOUCHES lists
    package = modules()
    found = {name: private_names_in(package[f"{ADAPTERS}.{name}"]) for name in adapters()}
    assert found == PRIVATE_TOUCHES


def test_the_walk_flags_what_it_should(tmp_path):
    module = tmp_path / "sample.py"
    module.write_text(
        "import os\nimport litellm\nimport torch as t\nfrom trl import _private\nfrom espl_bench.method.loop import _rate\n"
        "import torch._dynamo\n"
        "class Own:\n    def __init__(self):\n        self._mine = 1\n    def _helper(self):\n        return self._mine\n"
        "def use(trainer, other: Own, response):\n"
        "    trainer._last_loaded_step = 3\n"            # a third-party private attribute
        "    other._helper()\n"                          # this module's own: fine
        "    getattr(response, '_hidden_params', None)\n"
        "    getattr(response, '__doc__', None)\n"       # dunder: fine
        "    litellm.custom_provider_map = []\n"         # a third-party module's state
        "    t.cpu._is_avx512_bf16_supported()\n"
        "    os._exit(0)\n"                              # the standard library's: fine
        "    probes = ('_is_amx_tile_supported', '_')\n"  # a name looked up by string; "_" is none
        "    return getattr(other, '_mine')\n"          # this module's own: fine
    )
    assert sorted(line for line, _ in touches(module)) == [4, 5, 6, 13, 15, 17, 18, 20]


@pytest.mark.parametrize("name", adapters())
def test_each_adapter_still_fits_the_installed_library(name):
    adapter = importlib.import_module(f"{ADAPTERS}.{name}")
    version = metadata.version(adapter.LIBRARY)
    checked = SpecifierSet(adapter.CHECKED)
    # the docstring names every version the adapter was checked against
    assert all(clause.version in adapter.__doc__ for clause in checked), (adapter.CHECKED, adapter.__doc__)
    moved = adapter.missing()
    assert not moved, (f"{adapter.LIBRARY} {version} no longer has what espl/adapters/{name}.py relies on: "
                       f"{'; '.join(moved)}. That adapter was checked against {adapter.LIBRARY}{adapter.CHECKED}; "
                       f"update it for {version} (or pin {adapter.LIBRARY} below it in pyproject.toml)")


def test_the_trl_check_fails_when_a_release_moves_the_synced_step():
    from espl_bench.adapters import trl

    source = trl.grpo_source()
    assert trl.missing(source) == []
    moved = trl.missing(source.replace(trl.SYNCED_STEP, "_weights_step"))
    assert moved == [f"GRPOTrainer sets self.{trl.SYNCED_STEP}", f"GRPOTrainer reads self.{trl.SYNCED_STEP} (to skip a push)"]
    assert trl.missing(source.replace("self.use_vllm", "self.args.use_vllm")) == ["GRPOTrainer reads self.use_vllm"]
    assert trl.missing("") == ["trl.trainer.grpo_trainer.GRPOTrainer"]


def test_the_torch_check_fails_when_a_probe_is_gone(monkeypatch):
    import torch

    from espl_bench.adapters import torch as torch_internals

    gone = torch_internals.BF16_PROBES[1]
    monkeypatch.delattr(torch.cpu, gone)
    assert torch_internals.missing() == [f"torch.cpu.{gone}"]
    torch_internals.cpu_computes_bf16()  # a missing probe answers no, never raises


def test_the_litellm_check_fails_when_the_response_or_provider_list_moves(monkeypatch):
    import litellm

    from espl_bench.adapters import litellm as litellm_internals

    monkeypatch.setattr(litellm, "ModelResponse", type("ModelResponse", (), {}))
    monkeypatch.delattr(litellm, "custom_provider_map")
    assert litellm_internals.missing() == ["litellm.ModelResponse._hidden_params (or hidden_params)",
                                           "litellm.custom_provider_map (a list)"]


def test_the_litellm_provider_list_gets_back_what_it_had(monkeypatch):
    import litellm

    from espl_bench.adapters import litellm as litellm_internals

    theirs = {"provider": "someone-else", "custom_handler": object()}
    monkeypatch.setattr(litellm, "custom_provider_map", [theirs])
    ours = object()
    litellm_internals.add_provider("espl-local-test", ours)
    assert litellm.custom_provider_map == [theirs, {"provider": "espl-local-test", "custom_handler": ours}]
    litellm_internals.remove_provider(ours)
    assert litellm.custom_provider_map == [theirs]


def test_the_textarena_check_fails_when_a_game_loses_its_progress_measure(monkeypatch):
    import textarena as ta

    from espl_bench.adapters import textarena as textarena_internals

    assert textarena_internals.missing(("NoSuchGame-v0",)) == ["textarena game NoSuchGame-v0"]
    module, _, cls = ta.envs.registration.ENV_REGISTRY["Sudoku-v0-raw"].entry_point.partition(":")
    monkeypatch.delattr(getattr(importlib.import_module(module), cls), textarena_internals.PROGRESS)
    assert textarena_internals.missing(("Sudoku-v0",)) == [f"{module}.{cls}.{textarena_internals.PROGRESS}"]
