"""``espl-bench calibrate``: the env settings at which the model under test has something to learn.

RL gets a signal only from groups whose rewards differ (:func:`espl_bench.method.learning.is_flat`
is the rule), and a prompt has room to help only below the ceiling. Calibration measures, for
each setting of a difficulty grid (:mod:`espl_bench.envs.difficulty`), the model's success with
the root program on the first ``problems`` *train* problems, ``samples`` samples each (the
evaluation protocol, :class:`espl_bench.scoring.evaluator.Evaluator`, on the train split: it never
sees a test problem), and the fraction of those problems whose samples disagree (the groups an
RL step at group size ``samples`` could learn from).

The chosen setting is the one with the most informative groups among those whose success lies in
``band``; ties go to the success nearest the band's middle. It is written as a run config
(``config.yaml``: env, env_kwargs, model, sampling) next to the full report (``calibration.json``,
:class:`Calibration`); when no setting is in the band the report says so and no config is
written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from espl_bench import stats
from espl_bench.config import RunConfig
from espl_bench.envs.registry import make_env
from espl_bench.envs.splits import SplitPlan
from espl_bench.method.learning import is_flat
from espl_bench.method.program import Pool
from espl_bench.records import EvalItems
from espl_bench.rundir import atomic_write, dump_json
from espl_bench.scoring.evaluator import Evaluator

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class CalibrationPoint:
    """One setting of the grid, as measured."""

    env_kwargs: dict[str, Any]
    success: stats.Interval  # clustered by problem
    informative: float  # fraction of problems whose samples' rewards differ
    problems: int
    samples: int
    tokens_per_reply: float
    seconds: float

    def in_band(self, band: tuple[float, float]) -> bool:
        return band[0] <= self.success.estimate <= band[1]

    def to_dict(self) -> dict:
        return {**asdict(self), "success": self.success.to_dict()}


@dataclass(frozen=True)
class Calibration:
    """The report ``calibration.json`` holds."""

    env: str
    model: str
    base_env_kwargs: dict[str, Any]
    split: str
    band: tuple[float, float]
    max_new_tokens: int
    temperature: float
    points: list[CalibrationPoint]
    chosen: int | None
    provenance: dict = field(default_factory=dict)

    @property
    def chosen_point(self) -> CalibrationPoint | None:
        return None if self.chosen is None else self.points[self.chosen]

    def verdict(self) -> str:
        point = self.chosen_point
        if point is None:
            closest = min(self.points, key=lambda p: _distance(p.success.estimate, self.band))
            return (f"no setting puts success in [{self.band[0]:.2f}, {self.band[1]:.2f}] (closest {closest.env_kwargs}: "
                    f"{closest.success}); widen the grid (--grid) or the band (--band)")
        return (f"chosen {point.env_kwargs}: success {point.success}, {point.informative:.0%} of groups informative "
                f"at group size {point.samples}")

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "env": self.env, "model": self.model,
                "base_env_kwargs": self.base_env_kwargs, "measured_on": f"{self.split} split (never test)",
                "band": list(self.band), "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "points": [p.to_dict() for p in self.points], "chosen": self.chosen, "verdict": self.verdict(),
                "provenance": self.provenance}


def choose(points: Sequence[CalibrationPoint], band: tuple[float, float]) -> int | None:
    """The index of the chosen setting (see the module docstring), or None when none is in ``band``."""
    middle = (band[0] + band[1]) / 2
    inside = [i for i, p in enumerate(points) if p.in_band(band)]
    if not inside:
        return None
    return max(inside, key=lambda i: (points[i].informative, -abs(points[i].success.estimate - middle), -i))


def measure(cfg: RunConfig, env_kwargs: dict[str, Any], engine_for: Callable[[Callable, SplitPlan], Any],
            problems: int, samples: int, seed: int) -> CalibrationPoint:
    """One setting: ``cfg``'s env with ``env_kwargs`` over its own, scored with the root program."""
    kwargs = {**cfg.env_kwargs, **env_kwargs}
    plan = SplitPlan.for_env(make_env(cfg.env, **kwargs), cfg.validation_problems)
    train = plan.train
    items = EvalItems(train.split, tuple(train.indices[:problems]), samples, seed, cfg.prompt_placement)
    root = Pool.with_root(preamble=cfg.preamble).root()
    started = time.monotonic()
    cell = Evaluator(cfg, plan).score(engine_for(lambda: make_env(cfg.env, **kwargs), plan), [root], "base", items)[0]
    replies = max(1, cell.turns)
    return CalibrationPoint(env_kwargs, stats.interval([sum(row) / len(row) for row in cell.successes]),
                            sum(not is_flat(row) for row in cell.rewards) / len(cell.rewards), len(items.indices),
                            samples, round(cell.generated_tokens / replies, 1), round(time.monotonic() - started, 1))


def write(report: Calibration, cfg: RunConfig, out: Path) -> list[Path]:
    """``calibration.json`` and, when a setting was chosen, ``config.yaml``; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "calibration.json"]
    atomic_write(written[0], dump_json(report.to_dict()))
    point = report.chosen_point
    config = out / "config.yaml"
    if point is None:
        config.unlink(missing_ok=True)  # a stale choice must not outlive the report that dropped it
        return written
    values = {"env": cfg.env, "env_kwargs": {**cfg.env_kwargs, **point.env_kwargs}, "model": cfg.model,
              "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p,
              "group_size": point.samples}
    header = (f"# espl-bench calibrate: {report.verdict()}\n"
              f"# use: espl-bench run --config {config} --method espl\n")
    atomic_write(config, header + yaml.safe_dump(values, sort_keys=False))
    return [*written, config]


def _distance(x: float, band: tuple[float, float]) -> float:
    return max(band[0] - x, 0.0, x - band[1])


def render(report: Calibration) -> str:
    width = max(len(str(p.env_kwargs)) for p in report.points) + 1
    lines = [f"calibration of {report.env} for {report.model} on the {report.split} split (never test); "
             f"band [{report.band[0]:.2f}, {report.band[1]:.2f}] (* chosen, + in the band)",
             f"  {'setting':<{width}} {'success [95% interval]':<24} informative  tokens  seconds"]
    for i, p in enumerate(report.points):
        mark = "*" if i == report.chosen else ("+" if p.in_band(report.band) else " ")
        lines.append(f"{mark} {str(p.env_kwargs):<{width}} {str(p.success):<24} {p.informative:>11.0%}  "
                     f"{p.tokens_per_reply:>6.1f}  {p.seconds:>7.1f}")
    lines.append(report.verdict())
    return "\n".join(lines) + "\n"


def run_calibration(cfg: RunConfig, grid: Sequence[dict[str, Any]], *, problems: int, samples: int,
                    band: tuple[float, float], out: Path, seed: int = 0, sampler=None) -> tuple[Calibration, list[Path]]:
    """Measure every setting of ``grid`` with ``cfg``'s model (the in-process sampler unless one is
    given), choose one and write the report; progress is logged per setting."""
    from espl_bench.agents.rollout import RolloutEngine
    from espl_bench.running.provenance import provenance

    if sampler is None:
        from espl_bench.agents.devices import resolve_dtype
        from espl_bench.agents.sampler import TransformersSampler
        from espl_bench.training.models import resolve_model
        from espl_bench.training.policy import load_frozen

        sampler = TransformersSampler(*load_frozen(resolve_model(cfg.model), resolve_dtype(cfg.dtype),
                                                   cfg.attn_implementation))

    def engine_for(factory, plan: SplitPlan):
        return RolloutEngine(factory, sampler, reset_args=plan.reset_args)

    points = []
    for n, env_kwargs in enumerate(grid, 1):
        point = measure(cfg, env_kwargs, engine_for, problems, samples, seed)
        log.info("calibrate %s [%d/%d] %s: success %s, %.0f%% informative, %.0f s", cfg.env, n, len(grid), env_kwargs,
                 point.success, 100 * point.informative, point.seconds)
        points.append(point)
    report = Calibration(cfg.env, cfg.model, dict(cfg.env_kwargs), "train", band, cfg.max_new_tokens, cfg.temperature,
                         points, choose(points, band), provenance())
    return report, write(report, cfg, out)
