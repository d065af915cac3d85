"""Reflection on the embedded model: how often edit-operation calls yield valid operations, how
many reflector tokens an iteration spends, and how long its reflection takes.

    python scripts/measure_reflection.py --out runs/measure-reflection [--iterations 3] [run flags]
    python scripts/measure_reflection.py --out RUN_DIR --read-only

Runs ``espl-bench run`` (method espl on espl/Arithmetic-v0 at the quickstart's sizes, plus any
flags given) and reads the run folder. An edit-operation call is a critique, a batch revision or
a crossover call (repairs included); it is valid when its answer parses into at least one edit
(:func:`espl_bench.method.edits.parse_ops`, ids checked against the principles shown in its
prompt) and at least one edit passes the admission rule (:mod:`espl_bench.method.admission`),
whose copy guard also knows the templates' earlier examples ("Check the sign of every term
before adding."). The same rule scores a run of any version, so before and after are measured alike. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from espl_bench.method.admission import admit
from espl_bench.method.copies import CopyGuard
from espl_bench.method.edits import ReflectionParseError, parse_ops
from espl_bench.method.reflection import load_templates
from espl_bench.records import Usage
from espl_bench.rundir import RunDir

KINDS = {"critique": {"add", "modify"}, "batch revision": {"add", "modify", "merge"},
         "crossover": {"add", "modify", "remove"}}
# the examples the templates showed before they held only placeholders
EARLIER_EXAMPLES = ['"text": "Check the sign of every term before adding."',
                    '"text": "Evaluate the innermost parentheses first, then work outwards."']
GUARD = CopyGuard([*load_templates().values(), *EARLIER_EXAMPLES])


def _ids(prompt: str) -> set[str]:
    return set(re.findall(r"^(G\d+):", prompt, flags=re.MULTILINE))


def valid(purpose: str, prompt: str, answer: str) -> bool:
    kind = next((k for k in KINDS if purpose.startswith(k)), None)
    try:
        ops = parse_ops(answer, allowed=KINDS[kind], valid_ids=_ids(prompt), max_ops=8)
    except ReflectionParseError:
        return False
    return any(op.op == "remove" or admit(op.text, guard=GUARD).admitted for op in ops)


def measure(out: Path) -> dict:
    calls = good = 0
    paths: dict[str, int] = {}
    run = RunDir(out)
    for entry in run.reflection_logs():
        purpose = entry.get("purpose", "")
        if not purpose.startswith(tuple(KINDS)) or ("answer" not in entry and "error" not in entry):
            continue
        calls += 1
        paths[entry.get("path", "unrecorded")] = paths.get(entry.get("path", "unrecorded"), 0) + 1
        good += "answer" in entry and valid(purpose, entry.get("prompt", ""), entry["answer"])
    metrics = run.history()
    n = len(metrics)
    zero = Usage()

    def per_iteration(values) -> float:
        return round(sum(values) / n, 1)

    return {"iterations": n, "edit_calls": calls, "valid_edit_calls": good,
            "valid_fraction": round(good / calls, 3) if calls else None, "paths": paths,
            "reflector_calls_per_iteration": per_iteration(m.reflection_calls for m in metrics),
            "reflector_completion_tokens_per_iteration":
                per_iteration(m.usage.get("reflector", zero).completion_tokens for m in metrics),
            "reflector_prompt_tokens_per_iteration":
                per_iteration(m.usage.get("reflector", zero).prompt_tokens for m in metrics),
            "learn_and_reflect_seconds_per_iteration":
                per_iteration(m.phase_seconds.get("learn + reflect", 0.0) for m in metrics),
            "iteration_seconds": [m.seconds for m in metrics],
            "phase_seconds": [m.phase_seconds for m in metrics],
            "outcomes": [m.reflections for m in metrics]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/measure-reflection")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--read-only", action="store_true", help="measure an existing run folder")
    args, extra = parser.parse_known_args()
    out = Path(args.out)
    if not args.read_only:
        subprocess.run([sys.executable, "-m", "espl_bench", "run", "--env", "espl/Arithmetic-v0", "--method", "espl",
                        "--iterations", str(args.iterations), "--programs", "2", "--batch-size", "2",
                        "--group-size", "2", "--out", str(out), *extra], check=True)
    print(json.dumps(measure(out), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
