"""Tier-1 sandbox for model-written code: a limited subprocess that returns JSON, never pickle.

``run_python(code, ...)`` runs ``code`` in a fresh ``python -I`` subprocess with:

* resource limits (address space, CPU seconds, processes, file size, open files),
* a scrubbed environment (no API keys: only ``PATH`` and locale survive),
* a new temporary working directory, removed afterwards,
* its own session, so the whole process group is killed on timeout (grandchildren included),
* stdin closed and stdout/stderr capped.

The child reports a result by printing one JSON value on its last stdout line; the parent only
``json.loads`` it, so nothing the child writes can execute in the parent. Rewards are computed by
the caller from that JSON, outside the sandbox. Not covered: the network (cut only where
``bwrap`` exists, see ``network``), kernel exploits, and CPU time of other processes; use a
container or remote sandbox (tier 2) for hostile code at scale.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

_KEEP_ENV = ("PATH", "LANG", "LC_ALL")


@dataclass(frozen=True)
class SandboxResult:
    ok: bool
    value: object = None  # the JSON value of the last stdout line, when ok
    stdout: str = ""
    stderr: str = ""
    error: str = ""  # timeout | exit code N | no JSON result | ...


def _limits(memory_mb: int, cpu_s: int, max_procs: int, file_mb: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        resource.setrlimit(resource.RLIMIT_NPROC, (max_procs, max_procs))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb << 20, file_mb << 20))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    return apply


def network_isolation_available() -> bool:
    return shutil.which("bwrap") is not None


def run_python(code: str, *, timeout_s: float = 5.0, memory_mb: int = 512, max_procs: int = 32, file_mb: int = 8,
               output_limit: int = 65536, network: bool = False) -> SandboxResult:
    """Run ``code`` under the limits above; see the module docstring."""
    workdir = tempfile.mkdtemp(prefix="espl-sandbox-")
    env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
    env["HOME"] = workdir
    command = [sys.executable, "-I", "-S", "-c", code]
    if not network and network_isolation_available():
        command = ["bwrap", "--unshare-net", "--die-with-parent", "--ro-bind", "/", "/", "--bind", workdir, workdir,
                   "--dev", "/dev", "--proc", "/proc", "--chdir", workdir, *command]
    try:
        proc = subprocess.Popen(command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=_limits(memory_mb, max(1, int(timeout_s) + 1), max_procs, file_mb))
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            out, err = proc.communicate()
            return SandboxResult(False, stdout=_cap(out, output_limit), stderr=_cap(err, output_limit), error="timeout")
        _kill_group(proc.pid)  # reap anything the code left running in its group
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    stdout, stderr = _cap(out, output_limit), _cap(err, output_limit)
    if proc.returncode != 0:
        return SandboxResult(False, stdout=stdout, stderr=stderr, error=f"exit code {proc.returncode}")
    lines = stdout.strip().splitlines()
    try:
        return SandboxResult(True, json.loads(lines[-1]) if lines else None, stdout, stderr)
    except (json.JSONDecodeError, ValueError):
        return SandboxResult(False, stdout=stdout, stderr=stderr, error="no JSON result on the last stdout line")


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _cap(data: bytes, limit: int) -> str:
    text = data[:limit].decode("utf-8", errors="replace")
    return text + ("\n[output truncated]" if len(data) > limit else "")
