"""The run's experiment tracker (``--report-to``): the loop's numbers per committed iteration, in the
same tracker run as the learner's (which TRL logs itself through its own ``report_to``).

The seam, :class:`Tracker`: ``log(iteration, metrics)`` records one committed iteration's numbers
(:func:`loop_scalars`: train reward and success, ratings, children, reflection outcomes, phase
times, the test success with its interval) at step ``iteration``; ``close()`` flushes and ends the
run. :func:`open_tracker` starts it before the learner exists, so that TRL's callback joins the
same run: TensorBoard through one folder, wandb and trackio through the library's current run.
Every tracker's files go under ``RUN/tracking`` (:data:`FOLDER`); the run is named after the run
folder and grouped by ``--run-group`` (bench: the grid's suite identity). Keys, projects and
offline modes come from the tracker's own environment variables (``WANDB_API_KEY``,
``WANDB_MODE=offline``, ``WANDB_PROJECT``, ...), never from the config.

Error policy: a tracker whose package is missing is a ``ConfigError`` naming the install, raised
before the run starts; once started, a tracker that fails to log costs that iteration's entry
(a warning), never the run.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from espl_bench.config import RunConfig
from espl_bench.errors import ConfigError
from espl_bench.records import IterationMetrics
from espl_bench.rundir import TRACKING as FOLDER
from espl_bench.training.trl_learner import TRACKER_PROJECT as PROJECT  # unless WANDB_PROJECT names another

log = logging.getLogger(__name__)


class Tracker(Protocol):
    """See the module docstring."""

    def log(self, iteration: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def loop_scalars(m: IterationMetrics) -> dict[str, float]:
    """One iteration's numbers for a tracker, by name (``loop/...``)."""
    scalars = {"loop/train_reward": m.train_reward, "loop/train_success": m.train_success,
               "loop/valid_rate": m.valid_rate, "loop/invalid_action_rate": m.invalid_action_rate,
               "loop/flat_groups": m.flat_groups, "loop/rollouts": m.rollouts,
               "loop/generated_tokens": m.generated_tokens, "loop/seconds/iteration": m.seconds,
               "loop/reflection/calls": m.reflection_calls, "loop/reflection/failed": m.reflection_counts.failed,
               "loop/reflection/skipped": m.reflection_counts.skipped,
               **{f"loop/seconds/{name}": value for name, value in m.phase_seconds.items()},
               **{f"loop/children/{kind}": n for kind, n in m.reflection_counts.children.items()}}
    if m.ratings:  # the pool's ratings: how many, the best mean and the best lower bound (mu - 2 sigma)
        scalars.update({"loop/ratings/programs": len(m.ratings),
                        "loop/ratings/best_mu": max(r.mu for r in m.ratings.values()),
                        "loop/ratings/best_lcb": max(r.mu - 2 * r.sigma for r in m.ratings.values())})
    if m.test is not None:  # the test success with its 95% interval, clustered by problem
        ci = m.test.interval
        scalars.update({"loop/test/success": m.test.success, "loop/test/success_low": ci.low,
                        "loop/test/success_high": ci.high, "loop/test/problems": len(m.test.items.indices),
                        "loop/test/samples": m.test.items.samples})
    return {name: float(value) for name, value in scalars.items()}


def folder(cfg: RunConfig) -> Path:
    return Path(cfg.out) / FOLDER


def run_name(cfg: RunConfig) -> str:
    return Path(cfg.out).resolve().name


def open_tracker(cfg: RunConfig) -> Tracker | None:
    """The run's tracker (None for ``--report-to none``), started; see the module docstring."""
    if cfg.report_to == "none":
        return None
    openers: dict[str, Callable[[RunConfig], Tracker]] = {"tensorboard": _TensorBoard, "wandb": _Wandb, "trackio": _Trackio}
    opener = openers[cfg.report_to]
    try:
        return opener(cfg)
    except ImportError:
        extra = "pip install -e '.[tracking]'" if cfg.report_to == "tensorboard" else f"pip install {cfg.report_to}"
        raise ConfigError(f"--report-to {cfg.report_to} needs its package; fix: {extra}, or --report-to none") from None


def log_iteration(tracker: Tracker | None, m: IterationMetrics) -> None:
    """Log a committed iteration; a tracker error is a warning (the run's records are its files)."""
    if tracker is None:
        return
    try:
        tracker.log(m.iteration, loop_scalars(m))
    except Exception as exc:  # a tracker's own failure (disk, service): the run goes on
        log.warning("tracker: iteration %d not logged (%s: %s)", m.iteration, type(exc).__name__, exc)


class _TensorBoard:
    """Event files in ``RUN/tracking``, where the learner's TensorBoard callback writes too."""

    def __init__(self, cfg: RunConfig) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder(cfg)))

    def log(self, iteration: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, iteration)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    """A wandb run with a stable id per run folder (a resumed run continues it); TRL's callback
    logs into it because it is the current run."""

    def __init__(self, cfg: RunConfig) -> None:
        import wandb

        folder(cfg).mkdir(parents=True, exist_ok=True)
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), name=run_name(cfg),
                              group=cfg.run_group, id=_stable_id(cfg), resume="allow", dir=str(folder(cfg)),
                              config=cfg.model_dump(mode="json"))
        self.run.define_metric("iteration")
        self.run.define_metric("loop/*", step_metric="iteration")

    def log(self, iteration: int, metrics: dict[str, float]) -> None:
        self.run.log({**metrics, "iteration": iteration})

    def close(self) -> None:
        self.run.finish()


class _Trackio:
    """A trackio run (local files unless a Space is configured through trackio's own variables);
    TRL's callback resumes it by project and name."""

    def __init__(self, cfg: RunConfig) -> None:
        os.environ.setdefault("TRACKIO_DIR", str(folder(cfg).resolve()))  # before trackio reads it
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=PROJECT, name=run_name(cfg), group=cfg.run_group, resume="allow",
                                config=cfg.model_dump(mode="json"))

    def log(self, iteration: int, metrics: dict[str, float]) -> None:
        self.trackio.log({**metrics, "iteration": iteration}, step=iteration)

    def close(self) -> None:
        self.trackio.finish()


def _stable_id(cfg: RunConfig) -> str:
    return hashlib.sha1(str(Path(cfg.out).resolve()).encode()).hexdigest()[:16]
