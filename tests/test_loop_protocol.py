"""Both loops are the one protocol the runner drives (espl/method/protocol.py), and the runner
touches nothing of a loop beyond it."""

import ast
import random
from pathlib import Path

import pytest

from espl_bench.baselines.gepa import GepaLoop
from espl_bench.config import RunConfig
from espl_bench.envs.splits import SplitPlan
from espl_bench.method.learning import FrozenLearner
from espl_bench.method.loop import EsplLoop, Parts
from espl_bench.method.program import Pool
from espl_bench.method.protocol import Loop
from espl_bench.method.selection import make_selector
from espl_bench.running.runner import LOOPS
from espl_bench.scoring.evaluator import Evaluator

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = set(Loop.__annotations__) | {name for name in vars(Loop) if not name.startswith("_")}


def test_the_protocol_names_what_the_runner_needs():
    assert MEMBERS == {"pool", "rng", "evaluator", "schedule", "iteration", "test_program", "pending_record",
                       "restore_pending"}


@pytest.mark.parametrize("method", ["espl", "gepa"])
def test_each_loop_has_every_member_of_the_protocol(method):
    cfg = RunConfig(env="espl/Arithmetic-v0", method=method, iterations=2, programs=2, batch_size=2, group_size=2)
    parts = Parts(engine=None, learner=FrozenLearner(), selector=make_selector("uniform", 2.0), mutation=None,
                  crossover=None, plan=SplitPlan.of_sizes(20, 5), eos_id=0)
    loop = LOOPS[cfg.spec.loop](cfg, parts, Pool.with_root(), random.Random(0))
    assert type(loop) is {"espl": EsplLoop, "gepa": GepaLoop}[method]
    assert all(hasattr(loop, name) for name in MEMBERS)
    assert isinstance(loop.evaluator, Evaluator) and loop.test_program().id == "p0"
    assert loop.pending_record() is None and len(loop.schedule(0)) >= 1
    assert not issubclass(GepaLoop, EsplLoop)  # two implementations, not one loop reaching into the other


def test_the_runner_uses_only_the_protocol_of_a_loop():
    tree = ast.parse((ROOT / "espl" / "running" / "runner.py").read_text())
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "loop"}
    assert used and used <= MEMBERS, used - MEMBERS
