"""The ``espl-bench`` command line. Flags are generated from :class:`espl_bench.config.RunConfig`."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from espl_bench.config import add_run_flags, build_config, given_values
from espl_bench.errors import EsplError

log = logging.getLogger("espl")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="espl-bench", description="Evolutionary System Prompt Learning benchmark suite")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train with E-SPL or a baseline on one environment")
    add_run_flags(run)
    plan = sub.add_parser("plan", help="the memory a run needs on each device, whether it fits, and the flags that "
                          "make it fit (from the model's config; no weights are read)")
    add_run_flags(plan)
    plan.add_argument("--gpus", type=int, default=None, help="GPUs of the machine planned for (default: this one's; 0: CPU)")
    plan.add_argument("--gpu-memory", type=float, default=None, help="GiB per GPU (default: this machine's, else 80)")
    plan.add_argument("--processes", type=int, default=1, help="learner processes (accelerate launch --num_processes)")
    plan.add_argument("--prompt-tokens", type=int, default=None, help="prompt tokens per row, earlier turns included "
                      "(default: 256)")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    envs = sub.add_parser("envs", help="list the environment ids, or check one: espl-bench envs check ID")
    envs.add_argument("action", nargs="?", choices=["list", "check"], default="list")
    envs.add_argument("env_id", nargs="?", help="with check: the id to check (a plugin's too: pkg:Name-v0)")
    envs.add_argument("--json", action="store_true", help="machine-readable output")
    envs.add_argument("--env-kwargs", default="{}", help="with check: JSON keyword arguments for the env")
    init = sub.add_parser("init-env", help="scaffold an environment plugin package")
    init.add_argument("name", help="package name, e.g. my_task")
    init.add_argument("--dest", default=".", help="folder to create the package in")
    best = sub.add_parser("select-best", help="pick a run's best committed iteration on its validation split (never the test split)")
    best.add_argument("run", help="a run folder (espl-bench run --out)")
    best.add_argument("--samples", type=int, default=2, help="samples per validation problem")
    ev = sub.add_parser("evaluate", help="the weights x prompt breakdown of a finished run, on more test problems")
    ev.add_argument("run", help="a run folder (espl-bench run --out)")
    ev.add_argument("--problems", type=int, default=None, help="test problems (default: the run's --eval-problems)")
    ev.add_argument("--samples", type=int, default=None, help="samples per problem (default: the run's --eval-samples)")
    cal = sub.add_parser("calibrate", help="find the env settings where the model's success gives RL a signal (train split only)")
    cal.add_argument("--env", required=True, help="environment id")
    cal.add_argument("--model", default="smollm2-135m", help="policy model (as espl-bench run --model)")
    cal.add_argument("--env-kwargs", default="{}", help="JSON keyword arguments every setting shares")
    cal.add_argument("--grid", default=None, help="JSON: a list of env_kwargs objects, or an object of lists (their "
                     "product); default: the env's built-in grid (envs/difficulty.py)")
    cal.add_argument("--problems", type=int, default=32, help="train problems per setting")
    cal.add_argument("--samples", type=int, default=4, help="samples per problem (the run's --group-size)")
    cal.add_argument("--max-new-tokens", type=int, default=128, help="tokens per policy reply")
    cal.add_argument("--temperature", type=float, default=0.7, help="policy sampling temperature")
    cal.add_argument("--band", default=None, help="LOW,HIGH: the success a chosen setting must lie in (default: "
                     "DEFAULT_BAND in envs/difficulty.py, where a group of 4 is informative at least a third of the "
                     "time and a prompt has room to help)")
    cal.add_argument("--seed", type=int, default=0, help="seed of the calibration samples")
    cal.add_argument("--out", default=None, help="folder for calibration.json and config.yaml (default: calibration/<env>)")
    principles = sub.add_parser("principles", help="check texts against the admission rule for principles: "
                                "espl-bench principles check TEXT... | --file F")
    principles.add_argument("action", choices=["check"])
    principles.add_argument("texts", nargs="*", help="texts to check (or --file)")
    principles.add_argument("--file", default=None, help="a JSON list of strings, or one text per line")
    principles.add_argument("--language", default="en", help="the principles' language (a wordfreq code)")
    principles.add_argument("--json", action="store_true", help="machine-readable output")
    principles.add_argument("--problems", default=None, help="the problems the reflector was shown (a JSON list of "
                            "strings, or one per line): a text that copies five words in a row of one is refused")
    principles.add_argument("--prompt", action="store_true", help="judge each text as a whole system prompt, as "
                            "GEPA's proposals are (markdown structure allowed; use a JSON list for texts of many lines)")
    from espl_bench.leaderboards.commands import add_parsers

    add_parsers(sub)
    return parser


def _run(args: argparse.Namespace) -> int:
    from espl_bench.training import distributed

    if distributed.world_size() > 1:  # under accelerate launch: rank 0 leads, the rest train
        distributed.init()
        try:
            if distributed.rank() > 0:
                logging.getLogger().setLevel(logging.WARNING)
                from espl_bench.training.trl_learner import follow_leader

                distributed.leave(follow_leader())
            with distributed.leading():
                cfg, result = _run_config(args)
        finally:
            distributed.shutdown()
    else:
        cfg, result = _run_config(args)
    sys.stdout.write(_screen(result, cfg.out))
    return 0


def _run_config(args: argparse.Namespace):
    from espl_bench.running.runner import run

    cfg = build_config(given_values(args))
    return cfg, run(cfg)


def _plan(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from espl_bench.errors import ConfigError
    from espl_bench.training.memory import PROMPT_TOKENS, GiB, Machine, make_plan, render

    for flag in ("gpus", "gpu_memory", "processes", "prompt_tokens"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "gpus" else 1):
            raise ConfigError(f"--{flag.replace('_', '-')}={value} is invalid; fix: pass a positive number")
    cfg = build_config({"env": "espl/Arithmetic-v0", **given_values(args)})  # the env only shapes prompts: --prompt-tokens stands for it
    machine = Machine.this_one(args.processes)
    if args.gpus is not None:
        machine = replace(machine, gpus=args.gpus, gpu_bf16=True if args.gpus else machine.gpu_bf16)
    if args.gpu_memory is not None:
        machine = replace(machine, gpu_bytes=int(args.gpu_memory * GiB))
    plan = make_plan(cfg, machine, args.prompt_tokens or PROMPT_TOKENS)
    sys.stdout.write(json.dumps(plan.to_dict(), indent=1) + "\n" if args.json else render(plan))
    return 0 if plan.fits else 1


def _screen(s, out: str) -> str:
    """The finished run on the terminal: what was measured on what, and what came of it."""
    from espl_bench import rundir

    lines = [
        "",
        f"E-SPL run finished: {s.env}  method={s.method}  model={s.model}",
        f"  iterations      {s.iterations_completed}/{s.iterations_planned}",
        f"  train reward    {' -> '.join(f'{x:.3f}' for x in s.train_reward)}",
    ]
    if s.test is not None:
        ks = "  ".join(f"{k} {v:.3f}" for k, v in s.test.pass_at().items())
        ci = s.test.interval
        lines.append(f"  test success    {s.test.success:.3f} [{ci.low:.3f}, {ci.high:.3f}]  {ks}  "
                     f"({s.test.items.describe()}; 95% interval clustered by problem)")
    for name, effect in (s.breakdown.effects if s.breakdown else {}).items():
        lines.append(f"  {name:<26}{effect.estimate:+.3f} [{effect.low:+.3f}, {effect.high:+.3f}]")
    children = s.reflection.children
    lines += [
        f"  test program    {s.test_program.id} ({s.test_program.rule})",
        f"  pool size       {s.pool_size}   children {', '.join(f'{k} {v}' for k, v in children.items())}"
        f"   failed {s.reflection.failed}   skipped {s.reflection.skipped}",
        f"  run folder      {out}  ({rundir.SUMMARY}, {rundir.BREAKDOWN}, {rundir.BEST_PROMPT}, {rundir.ITERATIONS}/)",
        "",
    ]
    return "\n".join(lines)


def _envs(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from espl_bench.envs.registry import list_envs

    if args.action == "check":
        return _check(args)
    rows = list_envs()
    if args.json:
        from espl_bench.envs.splits import SPLITS

        sys.stdout.write(json.dumps([{**asdict(e), "splits": list(SPLITS)} for e in rows], indent=1) + "\n")
    else:
        sys.stdout.write("".join(f"{e.id:32s} {e.kind:9s} turns {e.max_turns or '-':<3} {e.description}\n" for e in rows))
    return 0


def _check(args: argparse.Namespace) -> int:
    from espl_bench.envs.check import check
    from espl_bench.errors import ConfigError

    if not args.env_id:
        raise ConfigError("envs check needs an id; fix: espl-bench envs check espl/Arithmetic-v0")
    try:
        kwargs = json.loads(args.env_kwargs)
    except json.JSONDecodeError:
        raise ConfigError("--env-kwargs must be a JSON object; fix: --env-kwargs '{\"max_terms\": 4}'") from None
    report = check(args.env_id, kwargs)
    for line in report.warnings:
        log.warning("%s: %s", args.env_id, line)
    for line in report.failures:
        log.error("%s: %s", args.env_id, line)
    if report.overlap is not None:
        sys.stdout.write(f"{args.env_id}: {report.overlap.describe()}\n")
    sys.stdout.write(f"{args.env_id}: {'ok' if report.ok else 'FAILED'}\n")
    return 0 if report.ok else 1


def _principles(args: argparse.Namespace) -> int:
    """Each text's verdict under the admission rule; 0 when all are admitted, 1 when any is not."""
    from espl_bench.errors import ConfigError
    from espl_bench.method.admission import admit, languages
    from espl_bench.method.copies import ProblemCopies

    texts = list(args.texts) + (_texts_in(args.file) if args.file else [])
    if not texts:
        raise ConfigError("principles check needs texts; fix: espl-bench principles check 'Count each letter.' "
                          "or --file principles.json")
    if args.language not in languages():
        raise ConfigError(f"--language {args.language!r} has no wordfreq word list; fix: one of {', '.join(languages())}")
    problems = ProblemCopies(_texts_in(args.problems)) if args.problems else None
    if args.prompt:
        from espl_bench.baselines.gepa import template_guard
        from espl_bench.method.admission import admit_prompt

        guard = template_guard()
        verdicts = [admit_prompt(text, language=args.language, guard=guard, problems=problems) for text in texts]
    else:
        verdicts = [admit(text, language=args.language, problems=problems) for text in texts]
    if args.json:
        sys.stdout.write(json.dumps([{"text": v.text, "admitted": v.admitted, "reason": v.reason and v.reason.value,
                                      "detail": v.detail} for v in verdicts], indent=1, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write("".join(f"{'admitted' if v.admitted else 'rejected'}: {json.dumps(v.text, ensure_ascii=False)}"
                                 + ("" if v.admitted else f"\n  {v.describe()}") + "\n" for v in verdicts))
    return 0 if all(v.admitted for v in verdicts) else 1


def _texts_in(path: str) -> list[str]:
    """A file's texts: a JSON list of strings, else one text per non-empty line."""
    from espl_bench.errors import ConfigError

    try:
        content = open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; fix: give a UTF-8 text or JSON file") from None
    if content.lstrip().startswith("["):
        try:
            texts = json.loads(content)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix: a JSON list of "
                              "strings, or one text per line") from None
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ConfigError(f"{path} is not a JSON list of strings; fix: [\"first text\", \"second text\"]")
        return texts
    return [line for line in content.splitlines() if line.strip()]


def _init_env(args: argparse.Namespace) -> int:
    from pathlib import Path

    from espl_bench.envs.scaffold import scaffold

    root = scaffold(args.name, Path(args.dest))
    sys.stdout.write(f"created {root}\nnext: pip install -e {root} && espl-bench envs check {root.name}:"
                     f"{''.join(p.capitalize() for p in root.name.split('_'))}-v0\n")
    return 0


def _select_best(args: argparse.Namespace) -> int:
    from espl_bench.rundir import RunDir
    from espl_bench.running.select_best import render, select_best

    if args.samples < 1:
        raise EsplError(f"--samples={args.samples} is invalid; fix: pass 1 or more")
    result = select_best(args.run, samples=args.samples)
    sys.stdout.write(render(result) + f"written: {RunDir(args.run).selection_path}\n")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from espl_bench.envs.difficulty import DEFAULT_BAND, GridError, grid_for
    from espl_bench.errors import ConfigError
    from espl_bench.running.calibrate import render, run_calibration

    try:
        low, high = DEFAULT_BAND if args.band is None else (float(x) for x in args.band.split(","))
        if not 0 <= low <= high <= 1:
            raise ValueError
    except ValueError:
        raise ConfigError(f"--band={args.band!r} is invalid; fix: two numbers 0 <= LOW <= HIGH <= 1, e.g. --band 0.1,0.7") from None
    for flag in ("problems", "samples"):
        if getattr(args, flag) < (2 if flag == "samples" else 1):
            raise ConfigError(f"--{flag}={getattr(args, flag)} is invalid; fix: pass {'2' if flag == 'samples' else '1'} or more "
                              f"{'(informative groups need two samples)' if flag == 'samples' else ''}".rstrip())
    try:
        grid = grid_for(args.env, args.grid)
    except GridError as exc:
        raise ConfigError(str(exc)) from None
    cfg = build_config({"env": args.env, "model": args.model, "env_kwargs": args.env_kwargs, "group_size": args.samples,
                        "max_new_tokens": args.max_new_tokens, "temperature": args.temperature})
    out = Path(args.out or Path("calibration") / args.env.replace("/", "_").replace(":", "_"))
    report, written = run_calibration(cfg, grid, problems=args.problems, samples=args.samples, band=(low, high),
                                      out=out, seed=args.seed)
    sys.stdout.write(render(report) + "written: " + ", ".join(map(str, written)) + "\n")
    return 0 if report.chosen is not None else 1


def _evaluate(args: argparse.Namespace) -> int:
    from espl_bench.running.evaluate_run import evaluate_run, render

    for flag in ("problems", "samples"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise EsplError(f"--{flag}={value} is invalid; fix: pass 1 or more")
    result, path = evaluate_run(args.run, problems=args.problems, samples=args.samples)
    sys.stdout.write(render(result) + f"written: {path}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm", "transformers", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        from espl_bench.running.versions import check

        check()  # an untested torch/transformers/trl/peft/accelerate: one line now, not a traceback later
        from espl_bench.leaderboards.commands import bench, leaderboard

        handlers = {"run": _run, "plan": _plan, "envs": _envs, "init-env": _init_env, "leaderboard": leaderboard, "bench": bench,
                    "select-best": _select_best, "evaluate": _evaluate, "calibrate": _calibrate,
                    "principles": _principles}
        return handlers[args.command](args)
    except EsplError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; the last committed iteration is kept: continue with --resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
