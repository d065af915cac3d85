"""Lean sampling: the in-process sampler keeps one log-probability per row and step, never every
step's full-vocabulary logits, and its results equal the old path's (which this file keeps)."""

from dataclasses import replace

import pytest
import torch

from espl_bench.agents.sampler import SamplingParams, TransformersSampler


class OldPath(TransformersSampler):
    """The sampler before lean sampling: generate keeps every step's logits (``output_logits``),
    then one stacked (rows x steps x vocabulary) log-softmax picks the chosen tokens'."""

    def _generate_batch(self, prompts, params, seeds, schemas, budgets):
        real, kept = self.model.generate, {}

        def generate(**kwargs):
            out = real(**kwargs, return_dict_in_generate=True, output_logits=True)
            logits = torch.stack(out.logits, dim=1).float()
            if params.temperature > 0:
                logits = logits / params.temperature
            new_tokens = out.sequences[:, -len(out.logits):]
            kept["logps"] = torch.log_softmax(logits, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
            return out.sequences

        self.model.generate = generate  # an instance attribute: the model's own method is untouched
        try:
            completions = super()._generate_batch(prompts, params, seeds, schemas, budgets)
        finally:
            del self.model.generate
        return [replace(c, logprobs=[float(x) for x in kept["logps"][row, :len(c.completion_ids)]])
                for row, c in enumerate(completions)]


def assert_same(new, old, atol=1e-5):
    assert [c.completion_ids for c in new] == [c.completion_ids for c in old]
    assert [(c.text, c.finish_reason) for c in new] == [(c.text, c.finish_reason) for c in old]
    for a, b in zip(new, old):
        assert len(a.logprobs) == len(a.completion_ids)
        assert a.logprobs == pytest.approx(b.logprobs, abs=atol)


CASES = {
    "sampled": (SamplingParams(max_new_tokens=12, temperature=0.7, top_p=0.9, seed=3), None),
    "greedy": (SamplingParams(max_new_tokens=12, temperature=0.0, seed=3), None),
    "penalised": (SamplingParams(max_new_tokens=12, temperature=1.3, top_p=1.0, seed=4, repetition_penalty=1.3), None),
    "row budgets": (SamplingParams(max_new_tokens=12, temperature=0.7, top_p=1.0, seed=5), [3, 12, 7, 1]),
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_log_probabilities_equal_the_old_paths(tiny_model, case, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    params, budgets = CASES[case]
    conversations = [[{"role": "user", "content": f"Count to {n}."}] for n in (3, 5, 8, 13)]
    new = TransformersSampler(model, tokenizer).generate(conversations, params, budgets=budgets)
    old = OldPath(model, tokenizer).generate(conversations, params, budgets=budgets)
    assert_same(new, old)
    assert any(len(c.completion_ids) > 1 for c in new)


VOCAB = 32_000


@pytest.fixture(scope="module")
def wide_vocab():
    """A 2-layer random Llama with a 32k vocabulary (the embedded tokenizer decodes its ids), no
    EOS: every row runs to its token budget."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from espl_bench.training.models import convert_embedded

    tokenizer = AutoTokenizer.from_pretrained(convert_embedded())
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = None
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(VOCAB + 1)  # an id this model never emits
    return model, tokenizer


def _status(key: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key))


def peak_growth(sampler, new_tokens: int, rows: int = 2):
    """Bytes the process's peak resident memory rose above its start during one generate call
    (Linux: writing 5 to /proc/self/clear_refs resets the peak), and the completions. Large
    tensors are mapped and unmapped on their own, so the peak follows what torch holds."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    start = _status("VmRSS:")
    completions = sampler.generate([[]] * rows, SamplingParams(max_new_tokens=new_tokens, temperature=0.7, top_p=1.0,
                                                               seed=1),
                                   prompt_ids=[list(range(100 + r, 120 + 3 * r)) for r in range(rows)])
    return _status("VmHWM:") - start, completions


@pytest.fixture
def one_thread():
    # Two threads on a shared, loaded CPU made each decoding step ~8x slower here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_peak_memory_does_not_grow_with_new_tokens_times_vocabulary(wide_vocab, one_thread):
    try:
        open("/proc/self/clear_refs", "w").close()
    except OSError:
        pytest.skip("the peak resident memory cannot be reset here (/proc/self/clear_refs)")
    model, tokenizer = wide_vocab
    rows, short, long = 2, 16, 512
    one_copy = rows * (long - short) * VOCAB * 4  # the (rows x steps x vocabulary) float32 logits the old path kept
    lean, old = TransformersSampler(model, tokenizer), OldPath(model, tokenizer)
    peak_growth(lean, short, rows)  # first calls allocate what every call reuses
    lean_short, _ = peak_growth(lean, short, rows)
    lean_long, lean_out = peak_growth(lean, long, rows)
    old_short, _ = peak_growth(old, short, rows)
    old_long, old_out = peak_growth(old, long, rows)
    assert [len(c.completion_ids) for c in lean_out] == [long] * rows
    assert_same(lean_out, old_out)
    # The measure sees the old path's logits (at least one full copy of them) ...
    assert old_long - old_short > one_copy
    # ... and the lean path's peak stays flat: well under a tenth of one copy.
    assert lean_long - lean_short < one_copy / 10, (lean_short, lean_long, one_copy)
