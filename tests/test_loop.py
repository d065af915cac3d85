"""The iteration on a tiny random model: weights move with RL and stay put without it."""

import random

import pytest
import torch

from espl_bench.agents.rollout import RolloutEngine
from espl_bench.agents.sampler import Completion, TransformersSampler
from espl_bench.config import RunConfig
from espl_bench.envs.registry import make_env
from espl_bench.envs.splits import SplitPlan
from espl_bench.method.learning import FrozenLearner
from espl_bench.method.loop import EsplLoop, Parts
from espl_bench.method.program import Pool
from espl_bench.method.reflection import Crossover, Mutation
from espl_bench.method.selection import make_selector
from espl_bench.training.policy import STALE_IS_MODE
from espl_bench.training.trl_learner import LearnerSettings, TRLLearner
from tests.fakes import ScriptedReflector

REVISION = '```json\n[{"op": "add", "text": "Work out each operation separately."}]\n```'


class RewardingSampler:
    """Wraps a real sampler but answers correctly in a fixed fraction of rows, so rewards vary."""

    def __init__(self, inner, env):
        self.inner, self.env = inner, env

    def continuation(self, history, new, ended_with_eos):
        return self.inner.continuation(history, new, ended_with_eos)

    def generate(self, conversations, params, prompt_ids=None, seeds=None):
        out = self.inner.generate(conversations, params, prompt_ids, seeds)
        return [Completion(text=(f"<answer>{self._answer(c)}</answer>" if i % 2 else c_out.text),
                           prompt_ids=c_out.prompt_ids, completion_ids=c_out.completion_ids, logprobs=c_out.logprobs,
                           finish_reason=c_out.finish_reason)
                for i, (c, c_out) in enumerate(zip(conversations, out))]

    def _answer(self, conversation):
        from espl_bench.envs.tool_use import calculator

        question = next(m["content"] for m in conversation if m["role"] == "user")
        return calculator(question.split("\n")[0].removeprefix("Calculate ").rstrip("."))


def build(tiny_model, tmp_path, method, **overrides):
    cfg = RunConfig(env="espl/Arithmetic-v0", method=method, model=str(tiny_model), iterations=2, batch_size=2,
                    group_size=2, programs=2, max_new_tokens=8, eval_problems=2, eval_samples=2,
                    learning_rate=1e-2, crossover_prob=1.0, out=str(tmp_path), **overrides)
    env = make_env(cfg.env)
    if cfg.trains_weights:
        learner = TRLLearner(LearnerSettings(run=cfg.model_copy(update={"lora_rank": 4, "lora_alpha": 8,
                                                                        "micro_batch_size": 4}),
                                             model_path=str(tiny_model), output_dir=tmp_path / "learner",
                                             rows_per_step=cfg.selected_programs * 4, group_size=2,
                                             # as the policy builder does under --max-staleness
                                             correct_sampler_logprobs=cfg.max_staleness > 0,
                                             importance_sampling_mode=STALE_IS_MODE if cfg.max_staleness else None))
        model, tokenizer = learner.model, learner.tokenizer
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        learner = FrozenLearner()
        model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model)
    sampler = RewardingSampler(TransformersSampler(model, tokenizer), env)
    reflector = ScriptedReflector(lambda messages: "summary" if "Summarise" in messages[0]["content"] else REVISION)
    parts = Parts(engine=RolloutEngine(lambda: make_env(cfg.env), sampler), learner=learner,
                  selector=make_selector("uniform"), mutation=Mutation(reflector) if cfg.evolves else None,
                  crossover=Crossover(reflector) if cfg.evolves else None, plan=SplitPlan.for_env(env, 4),
                  eos_id=tokenizer.eos_token_id)
    loop = EsplLoop(cfg, parts, Pool.with_root(), random.Random(0))
    return loop, model


def params(model, key):
    return {k: v.detach().clone() for k, v in model.named_parameters() if key in k}


@pytest.mark.parametrize("method", ["rl", "espl"])
def test_rl_and_espl_change_lora_weights(tiny_model, tmp_path, method):
    loop, model = build(tiny_model, tmp_path, method)
    before = params(model, "lora_B")
    assert before and all(torch.count_nonzero(v) == 0 for v in before.values())  # LoRA B starts at zero
    result = loop.iteration(1)
    after = params(model, "lora_B")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert result.metrics.rollouts == loop.cfg.selected_programs * 2 * 2
    assert 0 < result.metrics.train_reward < 1
    loop.parts.learner.close()


def test_evolution_keeps_weights_and_grows_pool(tiny_model, tmp_path):
    loop, model = build(tiny_model, tmp_path, "evolution")
    before = params(model, "")
    result = loop.iteration(1)
    after = params(model, "")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert result.metrics.reflections["mutation"] == "revision"
    assert result.metrics.reflection_counts.children["revision"] == 1
    child = loop.pool[result.metrics.children[0]]
    assert child.parents == ["p0"] and "Work out each operation separately." in child.principles.values()
    assert len(loop.pool) == 1 + len(result.metrics.children)


def test_self_reflection_is_a_population_of_one(tiny_model, tmp_path):
    loop, _ = build(tiny_model, tmp_path, "self-reflection")
    result = loop.iteration(1)
    # one program in both slots x 2 problems x 2 samples: the same rollouts as every other method
    assert result.metrics.rollouts == 8 and set(result.metrics.program_scores) == {"p0"}
    assert "crossover" not in result.metrics.reflections
    assert result.metrics.test is not None and set(result.metrics.test.pass_at()) == {"pass@1", "pass@2"}


class RecordingLearner:
    """Records when the loop submits and waits, to check the RL step overlaps reflection."""

    trainable = True

    def __init__(self, events):
        self.events = events

    def submit(self, batch):
        self.events.append(("submit", len(batch)))

    def wait(self):
        self.events.append(("wait", 0))
        return {"loss": 0.0}

    def close(self):
        pass


def test_rl_step_is_submitted_before_reflection_and_awaited_after(tiny_model, tmp_path):
    loop, _ = build(tiny_model, tmp_path, "evolution")
    events = []
    loop.parts.learner = RecordingLearner(events)
    reflector = ScriptedReflector(lambda messages: events.append(("reflect", 0)) or REVISION)
    loop.parts.mutation = Mutation(reflector)
    loop.parts.crossover = None
    loop.iteration(1)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "submit" and kinds[-1] == "wait" and "reflect" in kinds
    assert events[0][1] == 8  # M x B x N rows


def test_malformed_reflections_are_counted_and_leave_the_pool(tiny_model, tmp_path):
    loop, _ = build(tiny_model, tmp_path, "evolution")
    garbage = ScriptedReflector(["```json\n[{\"op\": \"add\", \"text\": \"unterminated"])
    loop.parts.mutation = Mutation(garbage, revision_fallback=False)
    loop.parts.crossover = Crossover(garbage)
    before = loop.pool.to_dict()
    result = loop.iteration(1)
    assert result.metrics.reflection_failures == len(result.outcomes) >= 1
    assert result.metrics.children == []
    assert loop.pool.to_dict()["programs"] == before["programs"]


def test_an_operator_that_raises_is_a_failed_outcome_not_a_crashed_run(tiny_model, tmp_path):
    loop, _ = build(tiny_model, tmp_path, "evolution")

    def broken(*args, **kwargs):
        raise KeyError("G2")  # what an unforeseen answer once did inside apply_edits

    loop.parts.mutation = broken
    result = loop.iteration(1)
    assert result.metrics.reflections["mutation"] == "failed" and result.metrics.reflection_failures >= 1
    assert loop.iteration(2).metrics.iteration == 2  # the run goes on
