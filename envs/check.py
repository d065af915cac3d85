"""``espl-bench envs check ID``: Gymnasium's env checker plus a same-seed determinism check.

Works on any id, a plugin's included. Contract deviations that a plain Gymnasium env may have
(missing ``info`` keys) are warnings; API errors, rewards outside [0, 1] and non-determinism are
failures.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field

from gymnasium.utils.env_checker import check_env

from envs.registry import make_env

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

    @property
    def ok(self) -> bool:
        return not self.failures


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
    kwargs = kwargs or {}
    report = CheckReport(env_id)
    env = make_env(env_id, **kwargs)
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
    report.warnings = sorted(set(report.warnings))
    return report
