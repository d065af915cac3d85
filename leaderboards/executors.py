"""Where a grid's runs execute: in turn in this process's children, or as Ray tasks on a cluster.

The seam, :class:`Executor`: ``probe(spec)`` is the identity a run of ``spec`` gets on the nodes
this executor uses (computed there); ``submit(spec)`` queues a run; ``next_done()`` blocks until
one finishes and returns it with its :class:`~espl_bench.leaderboards.grid.RunOutcome`, never
raising for a run that failed or whose worker was lost (that is an outcome too); ``close()``
releases what it started. Retrying is the caller's: it submits the spec again, and the run resumes
its folder.

``local`` runs one run at a time (today's ``bench``). ``ray`` imports Ray only when chosen: each
run is a task with the CPUs and GPUs its spec asks for (Ray sets ``OMP_NUM_THREADS`` to the CPUs,
so torch in the run uses that many threads), at most ``max_parallel`` in flight; it joins the
cluster at ``address`` (``auto``: the one ``ray start`` made on this node) or starts one here.
"""

from __future__ import annotations

import collections
import logging
from typing import Protocol

from espl_bench.errors import ConfigError
from espl_bench.leaderboards.grid import RunOutcome, RunSpec, execute
from espl_bench.leaderboards.identity import SuiteIdentity

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    """See the module docstring."""

    def probe(self, spec: RunSpec) -> SuiteIdentity: ...

    def submit(self, spec: RunSpec) -> None: ...

    def next_done(self) -> tuple[RunSpec, RunOutcome]: ...

    def close(self) -> None: ...


def _probe(spec: RunSpec) -> SuiteIdentity:  # a module-level function: Ray ships it to a node by name
    return spec.here()


class LocalExecutor:
    """One run at a time, each a child process of this one."""

    def __init__(self) -> None:
        self._queue: collections.deque[RunSpec] = collections.deque()

    def probe(self, spec: RunSpec) -> SuiteIdentity:
        return spec.here()

    def submit(self, spec: RunSpec) -> None:
        self._queue.append(spec)

    def next_done(self) -> tuple[RunSpec, RunOutcome]:
        spec = self._queue.popleft()
        return spec, execute(spec)

    def close(self) -> None:
        self._queue.clear()


class RayExecutor:
    """Each run a Ray task on the cluster (see the module docstring)."""

    def __init__(self, address: str | None, max_parallel: int | None) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray; fix: pip install -e '.[ray]' (or pip install 'ray>=2.60')") from None
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        self._max = max_parallel or float("inf")  # none: as many as the cluster's resources hold
        self._waiting: collections.deque[RunSpec] = collections.deque()
        self._running: dict = {}  # ObjectRef -> spec
        self._execute = ray.remote(execute)

    def gpus(self) -> float:
        """GPUs in the cluster."""
        return float(self._ray.cluster_resources().get("GPU", 0))

    def probe(self, spec: RunSpec) -> SuiteIdentity:
        task = self._ray.remote(_probe).options(num_cpus=spec.cpus, num_gpus=spec.gpus)
        return self._ray.get(task.remote(spec))

    def submit(self, spec: RunSpec) -> None:
        self._waiting.append(spec)
        self._launch()

    def _launch(self) -> None:
        while self._waiting and len(self._running) < self._max:
            spec = self._waiting.popleft()
            ref = self._execute.options(num_cpus=spec.cpus, num_gpus=spec.gpus, max_retries=0).remote(spec)
            self._running[ref] = spec

    def next_done(self) -> tuple[RunSpec, RunOutcome]:
        (ref,), _ = self._ray.wait(list(self._running), num_returns=1)
        spec = self._running.pop(ref)
        try:
            outcome = self._ray.get(ref)
        except self._ray.exceptions.RayError as exc:  # the worker or its node died: the run is lost
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            outcome = RunOutcome(-1, f"lost ({type(exc).__name__}{': ' + first if first else ''})")
        self._launch()
        return spec, outcome

    def close(self) -> None:
        for ref in self._running:
            self._ray.cancel(ref, force=True)
        self._running.clear()
        if self._started:
            self._ray.shutdown()


def make_executor(kind: str, address: str | None, max_parallel: int | None) -> LocalExecutor | RayExecutor:
    if kind == "ray":
        return RayExecutor(address, max_parallel)
    if address is not None or max_parallel is not None:
        raise ConfigError("--address and --max-parallel apply to --executor ray; fix: add --executor ray or drop them")
    return LocalExecutor()
