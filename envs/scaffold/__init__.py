"""``espl-bench init-env NAME``: a plugin package whose own tests pass out of the box."""

from __future__ import annotations

import keyword
import re
from importlib import resources
from pathlib import Path
from string import Template

from espl_bench.errors import ConfigError

FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "env.py.tmpl": "{package}/__init__.py",
    "test_env.py.tmpl": "tests/test_{package}.py",
    "README.md.tmpl": "README.md",
}


def scaffold(name: str, dest: Path) -> Path:
    """Write a plugin package for environment ``name`` into ``dest/<package>``; returns that folder."""
    package = re.sub(r"[^0-9a-zA-Z_]", "_", name).lower().strip("_")
    if not package or package[0].isdigit() or keyword.iskeyword(package):
        raise ConfigError(f"{name!r} is not usable as a package name; fix: use letters, digits and underscores, starting with a letter")
    env_name = "".join(part.capitalize() for part in package.split("_")) + "-v0"
    root = dest / package
    if root.exists():
        raise ConfigError(f"{root} already exists; fix: choose another name or remove it")
    values = {"package": package, "env_name": env_name, "dist": package.replace("_", "-")}
    templates = resources.files("espl_bench.envs") / "scaffold"
    for template, target in FILES.items():
        path = root / target.format(**values)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template((templates / template).read_text(encoding="utf-8")).substitute(values), encoding="utf-8")
    return root
