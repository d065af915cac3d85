"""Each finished run's test-time program under today's admission rule:
``python scripts/recheck_principles.py RECORDS... [--json]``.

A board's runs were made under the rule of their commit; a later rule may refuse what they
admitted. For every run that ended on a program other than the root, this prints each principle
the reflector wrote (GEPA's: the whole prompt, by ``admit_prompt``) with "admitted" or the reason,
and counts the runs that hold a refused text. The problems the reflector was shown are not in a
run's records, so the copy check reads the run's whole train split instead, a superset of what
each call showed (a coincidental five-word run with a problem it was not shown would count).
``leaderboards/calibrated-v8/README.md`` quotes it.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from espl_bench.baselines.gepa import template_guard
from espl_bench.envs.registry import make_env
from espl_bench.errors import RecordError, RunDirError
from espl_bench.method.admission import Verdict, admit, admit_prompt
from espl_bench.method.copies import ProblemCopies
from espl_bench.method.program import Pool
from espl_bench.rundir import RunDir, find_runs


@functools.cache
def train_problems(env_id: str, kwargs_json: str) -> ProblemCopies:
    """The env's train split as its first observations (the problems as the reflector reads them)."""
    env = make_env(env_id, **json.loads(kwargs_json))
    size = env.unwrapped.split_size("train")
    return ProblemCopies(env.reset(options={"split": "train", "index": i})[0] for i in range(size))


def verdicts(run: RunDir) -> tuple[str, str, list[Verdict]] | None:
    """(label, test program id, each written text's verdict); None when the run ended on the root."""
    summary, header = run.summary(), run.header()
    program = summary.test_program
    if program.id == "p0":
        return None
    problems = train_problems(summary.env, json.dumps(header.env_kwargs, sort_keys=True))
    label = f"{summary.env} {summary.method} seed {summary.seed}"
    if summary.method == "gepa":  # a whole prompt written by GEPA's proposer
        return label, program.id, [admit_prompt(program.text, guard=template_guard(), problems=problems)]
    pool = run.last_pool()
    if pool is None:
        return None
    principles = Pool.from_record(pool)[program.id].principles
    return label, program.id, [admit(text, problems=problems) for text in principles.values()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+", help="run folders or folders holding them")
    parser.add_argument("--json", action="store_true", help="one JSON object per run")
    args = parser.parse_args(argv)
    folders = sorted(find_runs([Path(r) for r in args.records]))
    if not folders:
        sys.stderr.write(f"no run folders under {', '.join(args.records)}; fix: give run folders or a records folder\n")
        return 2
    try:
        found = [v for folder in folders if (v := verdicts(RunDir(folder))) is not None]
    except (RunDirError, RecordError) as exc:
        sys.stderr.write(f"cannot read a run: {exc}; fix: give finished runs (summary.json and run.json)\n")
        return 2
    for label, program_id, checked in found:
        if args.json:
            sys.stdout.write(json.dumps({"run": label, "program": program_id, "texts": [
                {"text": v.text, "admitted": v.admitted, "reason": v.reason and v.reason.value} for v in checked]},
                ensure_ascii=False) + "\n")
            continue
        sys.stdout.write(f"{label} ({program_id}):\n" + "".join(
            f"  {v.describe()[:60] if not v.admitted else 'admitted'}: {json.dumps(v.text, ensure_ascii=False)[:90]}\n"
            for v in checked))
    refused = sum(any(not v.admitted for v in checked) for _, _, checked in found)
    sys.stderr.write(f"{refused} of {len(found)} runs that ended on an evolved program hold a text the rule refuses\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
