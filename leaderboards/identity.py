"""What a grid's records share: the settings under which its runs' numbers were made.

A suite run on a GPU in bfloat16, with vLLM or another reflector, at another suite version or
another espl-bench release, is another experiment; :class:`SuiteIdentity` holds exactly that (the
device kind, the policy's dtype, the sampler, the reflector and its dtype, the model, the code and
suite versions, and any other result-changing run option given to ``bench``), so that ``bench``
never completes one grid with records of another. The git commit is not part of it: commits that
change no run's result are the rule, and :data:`~espl_bench.leaderboards.suite.SUITE_VERSION` is
bumped by those that do.

Contract:

* :func:`node_identity` is computed where a run runs (the device and what ``auto`` dtypes resolve
  to are that machine's); ``bench`` writes it to ``RUN/suite.json`` (:data:`IDENTITY_FILE`) before
  the run starts.
* :func:`read_identity` reads it back; a folder written before identities were recorded is read as
  what it was made with (a CPU, a float32 policy and in-process reflector, its own config's
  sampler, reflector and model, its summary's espl-bench version, suite version unrecorded), so it
  agrees with its own kind and with nothing newer.
* :meth:`SuiteIdentity.differences` names the fields two identities differ in.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from espl_bench.agents.devices import device_kind, resolve_dtype
from espl_bench.agents.reflector import DEFAULT_REFLECTOR
from espl_bench.config import RunConfig
from espl_bench.errors import RecordError
from espl_bench.rundir import IDENTITY, RunDir

IDENTITY_FILE = IDENTITY
# The fields with a place of their own; the other result-changing options given to bench are
# ``settings``.
_OWN = frozenset({"model", "sampler", "reflector", "dtype", "reflector_dtype"})


@dataclass(frozen=True)
class SuiteIdentity:
    """The grid-wide settings a record was made under (see the module docstring)."""

    suite_version: str | None  # None: made before runs recorded it
    code: str | None  # the espl-bench release
    model: str
    device: str  # cpu | cuda
    dtype: str  # the policy's, resolved
    sampler: str
    reflector: str
    reflector_dtype: str | None  # the in-process reflector's, resolved (None for another reflector)
    settings: dict[str, Any] = field(default_factory=dict)  # other result-changing run options

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> SuiteIdentity:
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not names - {"settings"} <= set(data):
            raise RecordError(f"{where} is not a suite identity; fix: delete it and run the suite there again")
        return cls(**{k: v for k, v in data.items() if k in names})

    def differences(self, other: SuiteIdentity) -> list[str]:
        """``"dtype float32 vs bfloat16"`` for every field that differs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{name} {_shown(mine[name])} vs {_shown(theirs[name])}" for name in mine if mine[name] != theirs[name]]

    def describe(self) -> str:
        extra = "".join(f" {k}={_shown(v)}" for k, v in sorted(self.settings.items()))
        reflector = self.reflector + (f" ({self.reflector_dtype})" if self.reflector_dtype else "")
        return (f"suite v{self.suite_version or '?'}, espl-bench {self.code or '?'}, {self.model} on {self.device} "
                f"in {self.dtype}, sampler {self.sampler}, reflector {reflector}{extra}")

    def group(self, suite: str) -> str:
        """A tracker group name for the grid: readable, and unique to the identity."""
        digest = hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{suite}-v{self.suite_version or 'x'}-{self.device}-{self.dtype}-{self.sampler}-{digest}"


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def settings_of(given: dict[str, Any]) -> dict[str, Any]:
    """The run options given to bench that change results and have no field of their own."""
    changing = set(RunConfig(env="-").identity())
    return {k: v for k, v in sorted(given.items()) if k in changing and k not in _OWN}


def node_identity(cfg: RunConfig, suite_version: str, settings: dict[str, Any]) -> SuiteIdentity:
    """The identity ``cfg`` runs under on this machine (call it where the run runs)."""
    device = device_kind()
    in_process = cfg.reflector == DEFAULT_REFLECTOR
    return SuiteIdentity(suite_version=suite_version, code=_version(), model=cfg.model, device=device,
                         dtype=resolve_dtype(cfg.dtype, device), sampler=cfg.sampler, reflector=cfg.reflector,
                         reflector_dtype=resolve_dtype(cfg.reflector_dtype, device) if in_process else None,
                         settings=dict(settings))


def read_identity(folder: Path) -> SuiteIdentity:
    """The identity a run folder (or its compact copy) was made under; see the module docstring."""
    path = folder / IDENTITY_FILE
    if path.is_file():
        return SuiteIdentity.from_dict(_json(path), str(path))
    run = RunDir(folder)
    header, summary = (_json(path) if path.is_file() else {} for path in (run.header_path, run.summary_path))
    config = header.get("config") or {}
    reflector = config.get("reflector", DEFAULT_REFLECTOR)
    # run.json's precision where the run recorded it; before that every policy ran in float32
    dtype = (header.get("precision") or {}).get("resolved") or "float32"
    return SuiteIdentity(suite_version=None, code=(summary.get("provenance") or {}).get("espl_bench"),
                         model=config.get("model", summary.get("model", "")), device="cpu", dtype=dtype,
                         sampler=config.get("sampler", "transformers"), reflector=reflector,
                         reflector_dtype="float32" if reflector == DEFAULT_REFLECTOR else None)


def write_identity(folder: Path, identity: SuiteIdentity) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{IDENTITY_FILE}.tmp"
    tmp.write_text(json.dumps(identity.to_dict(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(folder / IDENTITY_FILE)


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RecordError(f"{path} is unreadable ({type(exc).__name__}); fix: restore it or run that run again") from None
    if not isinstance(data, dict):
        raise RecordError(f"{path} does not hold an object; fix: restore it or run that run again")
    return data


def _version() -> str | None:
    try:
        return metadata.version("espl-bench")
    except metadata.PackageNotFoundError:
        return None
