"""The CPU's cores shared between the RL step and the in-process reflector (agents/cores.py)."""

from __future__ import annotations

import threading

import pytest
import torch

from espl_bench.agents.cores import CoreShare, share_cores


@pytest.fixture(autouse=True)
def _threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_role_busy_alone_gets_every_core_and_two_split_them():
    share = CoreShare(4)
    assert share.threads("learner") == share.threads("reflector") == 4
    share.start("reflector")
    assert (share.threads("learner"), share.threads("reflector")) == (2, 4)  # the learner waits: all 4 decode
    share.start("learner")
    assert (share.threads("learner"), share.threads("reflector")) == (2, 2)
    share.stop("reflector")
    assert share.threads("learner") == 4
    odd = CoreShare(3)
    odd.start("learner"), odd.start("reflector")
    assert (odd.threads("learner"), odd.threads("reflector")) == (2, 1)  # the step computes, decoding reads
    one = CoreShare(1)
    one.start("reflector")
    assert one.threads("learner") == 1
    one.stop("reflector"), one.stop("reflector")  # a stop too many does not go below idle
    one.start("reflector")
    assert one._busy["reflector"] == 1
    with pytest.raises(ValueError, match="at least one core"):
        CoreShare(0)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2))


def test_a_hooked_model_runs_forward_and_backward_on_its_share():
    model, share = _tiny_llama(), CoreShare(4)
    seen = []
    assert share_cores(model, share, "learner") == 2  # its two decoder layers
    model.lm_head.register_forward_pre_hook(lambda m, a: seen.append(torch.get_num_threads()))
    ids = torch.randint(0, 64, (2, 8))
    loss = model(input_ids=ids, labels=ids).loss
    assert seen == [4]  # nothing else busy: every core
    share.start("reflector")  # the reflector begins while the step is between its passes
    loss.backward()
    assert torch.get_num_threads() == 2  # the backward through the layers took the learner's share
    share.stop("reflector")
    model(input_ids=ids)
    assert seen[-1] == 4


def test_the_local_reflector_decodes_on_its_share_while_it_generates():
    from espl_bench.agents.reflector import _Batcher
    from espl_bench.agents.sampler import SamplingParams

    share, seen = CoreShare(4), []

    class Recording:
        def generate(self, messages, params, seeds=None, **extra):
            seen.append((share.threads("learner"), torch.get_num_threads(), threading.current_thread().name))
            return ["ok"] * len(messages)

    batcher = _Batcher(Recording(), cores=share)
    try:
        assert batcher.submit([{"role": "user", "content": "hi"}], SamplingParams(max_new_tokens=4)).result(10) == "ok"
    finally:
        batcher.stop()
    assert seen == [(2, 4, "espl-local-reflector")]  # the learner's share shrank; alone, all 4 decode
    assert share.threads("learner") == 4  # released when the generate ended
