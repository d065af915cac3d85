"""``espl-bench envs check ID``: Gymnasium's env checker, a same-seed determinism check, and the
content overlap between the splits a run would use.

Works on any id, a plugin's included. Contract deviations that a plain Gymnasium env may have
(missing ``info`` keys) are warnings; API errors, rewards outside [0, 1], non-determinism and a
problem that occurs in two splits are failures.

Overlap (:func:`split_overlap`): the run's split plan (:class:`envs.splits.SplitPlan`, so a
validation split held out of train is checked too) gives each split's problems; each problem's
content is ``info["content_key"]`` from its reset (the observation text when the env gives no
key). Splits of at most ``limit`` problems are checked whole; larger ones at ``limit`` evenly
spaced problems, and the report says how many were compared.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field

from gymnasium.utils.env_checker import check_env

from espl_bench.envs.registry import make_env
from espl_bench.envs.splits import SPLITS, SplitPlan

PROBE_ACTIONS = (
    "<answer>1</answer>",
    "I am not sure.",
    '<tool_call>{"name": "search", "arguments": {"query": "river"}}</tool_call>',
    "[5]",
    "<answer>42</answer>",
)
INFO_KEYS = ("answer", "success", "valid", "metadata")


@dataclass
class CheckReport:
    env_id: str
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    overlap: OverlapReport | None = None

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass
class OverlapReport:
    """Problems shared by two splits, by content; see the module docstring."""

    checked: dict[str, int]  # split -> problems compared
    sizes: dict[str, int]  # split -> problems in the run's split
    derived_validation: bool
    shared: dict[str, list[str]] = field(default_factory=dict)  # "train/test" -> content keys in both
    keyed: bool = True  # the env names its problems' content (info["content_key"]); else observations stand in
    seeded: bool = False  # a plain Gymnasium env: problems are reset seeds

    @property
    def ok(self) -> bool:
        return not any(self.shared.values())

    def describe(self) -> str:
        where = ("from its own seed range" if self.seeded else "held out of train" if self.derived_validation
                 else "the env's own")
        sizes = ", ".join(f"{s} {self.sizes[s]} (checked {self.checked[s]})" for s in SPLITS)
        found = "; ".join(f"{pair}: {len(keys)} shared, e.g. {keys[0][:80]!r}" for pair, keys in self.shared.items() if keys)
        basis = "" if self.keyed else " (by first observation: the env gives no content_key)"
        return (f"splits {sizes}; validation {where}; "
                + (f"content overlap{basis}: {found}" if found else f"no content overlap{basis}"))


def _spaced(indices: range, limit: int) -> list[int]:
    if len(indices) <= limit:
        return list(indices)
    step = len(indices) / limit
    return [indices[int(k * step)] for k in range(limit)]


def split_overlap(env_id: str, kwargs: dict | None = None, *, validation_problems: int = 16,
                  limit: int = 200) -> OverlapReport:
    """Content shared between the train, validation and test problems a run of ``env_id`` uses."""
    env = make_env(env_id, **(kwargs or {}))
    plan = SplitPlan.for_env(env, validation_problems)
    keys: dict[str, dict[str, int]] = {}
    keyed = True
    for name in SPLITS:
        part = plan.of(name)
        keys[name] = {}
        for index in _spaced(part.indices, limit):
            seed, options = plan.reset_args(part.split, index, 0)
            observation, info = env.reset(seed=seed, options=options)
            keyed = keyed and "content_key" in (info or {})
            keys[name][str((info or {}).get("content_key", observation))] = index
    shared = {f"{a}/{b}": sorted(set(keys[a]) & set(keys[b])) for i, a in enumerate(SPLITS) for b in SPLITS[i + 1:]}
    return OverlapReport({s: len(_spaced(plan.of(s).indices, limit)) for s in SPLITS},
                         {s: plan.of(s).size for s in SPLITS}, plan.derived_validation, shared, keyed, plan.seeded)


def _episode(env, seed: int, max_steps: int) -> list[str]:
    """A JSON trace of one probe episode (reset, then the probe actions until it ends)."""
    observation, info = env.reset(seed=seed)
    trace = [json.dumps([observation, info], sort_keys=True, default=str)]
    for step in range(max_steps):
        result = env.step(PROBE_ACTIONS[step % len(PROBE_ACTIONS)])
        trace.append(json.dumps(result, sort_keys=True, default=str))
        if result[2] or result[3]:
            break
    return trace


def check(env_id: str, kwargs: dict | None = None, *, seeds: int = 3, max_steps: int = 25) -> CheckReport:
    from espl_bench.envs.contract import require_text
    from espl_bench.errors import EnvUnfit

    kwargs = kwargs or {}
    report = CheckReport(env_id)
    env = make_env(env_id, **kwargs)
    try:
        require_text(env_id, env, SplitPlan.for_env(env, 16))
    except EnvUnfit as exc:
        report.failures.append(str(exc))
        return report
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            check_env(env, skip_render_check=True)
        except Exception as exc:
            report.failures.append(f"gymnasium env checker: {type(exc).__name__}: {exc}")
    report.warnings += [f"gymnasium: {w.message}" for w in caught]
    first, second = make_env(env_id, **kwargs), make_env(env_id, **kwargs)
    for seed in range(seeds):
        try:
            a, b = _episode(first, seed, max_steps), _episode(second, seed, max_steps)
        except Exception as exc:
            report.failures.append(f"seed {seed}: the probe episode raised {type(exc).__name__}: {exc}")
            continue
        if a != b:
            index = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y) if len(a) == len(b) else min(len(a), len(b))
            report.failures.append(f"seed {seed}: two copies diverge at step {index} (not deterministic)")
        for line in a[1:]:
            _, reward, _, _, info = json.loads(line)
            if not 0.0 <= float(reward) <= 1.0:
                report.failures.append(f"seed {seed}: reward {reward} is outside [0, 1]")
                break
            missing = [k for k in INFO_KEYS if k not in info]
            if missing:
                report.warnings.append(f"info lacks {missing} (espl-bench then assumes success = reward >= 1, valid)")
                break
    try:
        report.overlap = split_overlap(env_id, kwargs)
        if not report.overlap.ok:
            # A shared content key is a shared problem; a shared first observation may hide different
            # secrets (a game's opening text), so without keys it is a warning.
            (report.failures if report.overlap.keyed else report.warnings).append(
                f"the splits share problems: {report.overlap.describe()}")
    except Exception as exc:
        report.failures.append(f"the split-overlap check raised {type(exc).__name__}: {exc}")
    report.warnings = sorted(set(report.warnings))
    return report
