"""Multi-turn rollouts continue from the previous turn's keys and values (agents/prefix_cache.py):
the same episodes as re-encoding every turn, within floating-point tolerance, for far fewer
prompt tokens encoded."""

import threading

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from espl_bench.agents import prefix_cache
from espl_bench.agents.rollout import EpisodeSpec, RolloutEngine
from espl_bench.agents.sampler import AdapterDisabled, SamplingParams, TransformersSampler
from tests.test_rollout import CountdownEnv


@pytest.fixture(scope="module")
def sampler(tiny_model):
    return TransformersSampler(AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model),
                               max_batch_size=3)


class Plain:
    """The sampler without the session (no ``reusing_cache``): today's re-encoding path."""

    def __init__(self, inner):
        self.inner = inner

    def generate(self, *args, **kwargs):
        return self.inner.generate(*args, **kwargs)

    def continuation(self, *args):
        return self.inner.continuation(*args)


def episodes(n: int) -> list[EpisodeSpec]:
    # Two system prompts of different lengths: rows reuse different numbers of tokens in one batch.
    return [EpisodeSpec("sys" if i % 2 else "a longer system prompt, to vary the widths", "train", i, seed=100 + i)
            for i in range(n)]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_multi_turn_episodes_reusing_the_cache_equal_re_encoded_ones(sampler, temperature):
    params = SamplingParams(max_new_tokens=5, temperature=temperature, seed=3)
    env = lambda: CountdownEnv(turns=4)  # noqa: E731
    again = RolloutEngine(env, Plain(sampler)).run(episodes(5), params)
    with prefix_cache.session() as store:
        reused = RolloutEngine(env, sampler).run(episodes(5), params)
    assert store.counts.reused > store.counts.encoded  # from turn 2 on only the new tokens were fed
    for a, b in zip(again, reused):
        assert a.turns == b.turns == 4
        assert a.prompt_ids == b.prompt_ids and a.completion_ids == b.completion_ids and a.env_mask == b.env_mask
        assert a.messages == b.messages
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)


def test_the_engine_opens_a_session_only_for_its_own_run(sampler):
    seen = []
    original = sampler.generate

    def spy(*args, **kwargs):
        seen.append(prefix_cache.current())
        return original(*args, **kwargs)

    sampler.generate = spy
    try:
        RolloutEngine(lambda: CountdownEnv(turns=2), sampler).run(episodes(2), SamplingParams(max_new_tokens=3))
    finally:
        del sampler.generate
    assert len(seen) == 2 and seen[0] is seen[1] is not None  # one store across the run's turns
    assert prefix_cache.current() is None  # and gone after it


def test_another_thread_does_not_see_the_session():
    with prefix_cache.session() as store:
        box = []
        worker = threading.Thread(target=lambda: box.append(prefix_cache.current()))
        worker.start()
        worker.join()
        assert box == [None] and prefix_cache.current() is store
        with prefix_cache.session() as inner:
            assert inner is store  # nested: the outer store


def test_a_stored_row_is_taken_only_by_a_prompt_it_begins_and_only_once():
    store = prefix_cache.PrefixStore()
    short, long = prefix_cache.Entry([1, 2], []), prefix_cache.Entry([1, 2, 3], [])
    store.entries += [short, long]
    assert store.take([1, 2, 3]) is short  # the longer one would leave nothing to feed
    assert store.take([1, 2, 3]) is None
    assert store.take([1, 2, 3, 4]) is long and store.entries == []
    store.entries.append(prefix_cache.Entry([5, 6], []))
    assert store.take([5, 7, 8]) is None  # not a prefix


def test_a_wrapper_with_the_adapter_off_reuses_through_the_inner_sampler(sampler):
    class Disabled(AdapterDisabled):  # the tiny model has no adapter: the wrapper's reuse path only
        def generate(self, *args, **kwargs):
            return self.sampler.generate(*args, **kwargs)

    with Disabled(sampler).reusing_cache() as store:
        RolloutEngine(lambda: CountdownEnv(turns=2), Disabled(sampler)).run(episodes(2), SamplingParams(max_new_tokens=3))
    assert store.counts.reused > 0


def test_a_sliding_window_model_re_encodes(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.config.layer_types = ["sliding_attention"] * model.config.num_hidden_layers
    sliding = TransformersSampler(model, AutoTokenizer.from_pretrained(tiny_model))
    with sliding.reusing_cache() as store:
        assert store is None and prefix_cache.current() is None  # its cache does not hold the whole sequence


def test_the_store_keeps_no_row_past_its_bound_nor_an_ended_episodes(sampler):
    params = SamplingParams(max_new_tokens=3, seed=1)
    with prefix_cache.session() as store:
        store.limit = 0
        RolloutEngine(lambda: CountdownEnv(turns=3), sampler).run(episodes(2), params)
        assert store.counts.reused == 0 and store.entries == []  # nothing fit: every turn re-encoded
    with prefix_cache.session() as store:
        RolloutEngine(lambda: CountdownEnv(turns=1), sampler).run(episodes(2), params)
        assert store.entries == [] and store.nbytes == 0  # single-turn episodes: dropped once they ended
    with prefix_cache.session() as store:
        RolloutEngine(lambda: CountdownEnv(turns=3), sampler).run(episodes(2), params)
        assert store.counts.reused > 0 and store.entries == []
