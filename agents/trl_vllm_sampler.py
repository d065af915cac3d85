"""The ``Sampler`` seam backed by the vLLM engine that TRL's ``GRPOTrainer`` itself drives (CUDA).

With ``use_vllm=True`` TRL owns a vLLM engine and pushes the policy's whole (LoRA-merged) weights
into it before every optimizer step's batch is requested: over NCCL to a ``trl vllm-serve``
process (``vllm_mode="server"``), or with ``load_weights`` into an engine inside the training
process (``vllm_mode="colocate"``). This sampler generates from that engine, so the loop's
rollouts always come from the weights of the last finished step with no adapter files involved.

Contract (that of :mod:`agents.sampler`, plus):
    Prompts are tokenized here with the learner's tokenizer and sent as token ids; completions
    come back with token ids and the sampled tokens' logprobs (temperature applied: TRL starts its
    colocated engine with processed logprobs and warns when a server runs without them), which
    TRL's importance-sampling correction uses.
    No seed is sent: one seed for a whole call would give every sample of a GRPO group the same
    answer. Call it only while the learner is idle (between ``wait()`` and the next
    ``submit()``, as the E-SPL loop does): TRL swaps the engine's weights inside its step.

Error policy:
    A failing engine or server raises (a broken system); a completion that hit the token limit is
    data with ``finish_reason="length"``.

Each engine is one small backend class with ``generate(prompts, params) -> [(ids, logprobs)]``.
:class:`GenerationEngine` goes through TRL's own ``VLLMGeneration.generate``, which wakes a
sleeping colocated engine (re-pushing the weights its level-2 sleep dropped) and puts it back to
sleep. That call is collective in server mode (it gathers every rank's prompts), while only the
leader samples here; so with several learner processes in server mode :class:`ServerEngine`
calls TRL's ``VLLMClient`` directly (tensor parallelism then lives in ``trl vllm-serve``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from espl_bench.agents.sampler import ChatTokens, Completion, Message, SamplingParams

log = logging.getLogger(__name__)


class Engine(Protocol):
    """Samples one completion per token-id prompt: ``[(completion_ids, logprobs), ...]`` in order."""

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[tuple[list[int], list[float]]]: ...


class ServerEngine:
    """TRL's ``VLLMClient`` of a ``trl vllm-serve`` process (TRL's ``vllm_mode="server"``)."""

    def __init__(self, client):
        self.client = client

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[tuple[list[int], list[float]]]:
        greedy = params.temperature <= 0
        out = self.client.generate(prompts=prompts, n=1, temperature=0.0 if greedy else params.temperature,
                                   top_p=1.0 if greedy else params.top_p, top_k=0, max_tokens=params.max_new_tokens,
                                   logprobs=0)
        # logprobs=0: one entry per token, the sampled token's own logprob.
        return [(list(ids), [float(top[0]) for top in lps])
                for ids, lps in zip(out["completion_ids"], out["logprobs"], strict=True)]


class GenerationEngine:
    """TRL's ``trainer.vllm_generation.generate`` with each call's own sampling settings."""

    def __init__(self, generation):
        self.generation = generation

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[tuple[list[int], list[float]]]:
        greedy = params.temperature <= 0
        # TRL reads its sampling settings from these public attributes (set once from GRPOConfig);
        # the loop samples with other settings (evaluation, turn budgets), restored after the call.
        wanted = {"temperature": 0.0 if greedy else params.temperature, "top_p": 1.0 if greedy else params.top_p,
                  "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "max_completion_length": params.max_new_tokens,
                  "logprobs": 0}  # 0: one entry per token, the sampled token's own logprob
        kept = {name: getattr(self.generation, name) for name in wanted}
        try:
            for name, value in wanted.items():
                setattr(self.generation, name, value)
            _, ids, logprobs, _ = self.generation.generate(prompts, None, num_generations=1)
        finally:
            for name, value in kept.items():
                setattr(self.generation, name, value)
        return [(list(seq), [float(step[0]) if step[0] is not None else 0.0 for step in lps])
                for seq, lps in zip(ids, logprobs, strict=True)]


def engine_of(vllm_generation, processes: int = 1) -> Engine:
    """The backend for TRL's ``trainer.vllm_generation`` under ``processes`` learner processes."""
    if vllm_generation.mode == "server" and processes > 1:
        return ServerEngine(vllm_generation.vllm_client)  # TRL's generate would wait for every rank
    return GenerationEngine(vllm_generation)


class TRLVLLMSampler(ChatTokens):
    """Samples from the vLLM engine TRL keeps in sync; see the module docstring for the contract."""

    def __init__(self, engine: Engine, tokenizer, eos_ids: set[int] | None = None):
        self.engine, self.tokenizer = engine, tokenizer
        self.eos_ids = eos_ids if eos_ids is not None else {tokenizer.eos_token_id}

    def generate(self, conversations: Sequence[list[Message]], params: SamplingParams,
                 prompt_ids: Sequence[list[int] | None] | None = None,
                 seeds: Sequence[int] | None = None) -> list[Completion]:
        # ``seeds`` are not sent (see the module docstring).
        encoded = self.prompts(conversations, prompt_ids)
        if not encoded:
            return []
        answers = self.engine.generate(encoded, params)
        if len(answers) != len(encoded):
            raise RuntimeError(f"the vLLM engine answered {len(answers)} of {len(encoded)} prompts")
        return [self._completion(prompt, ids, logprobs) for prompt, (ids, logprobs) in zip(encoded, answers)]

    def _completion(self, prompt: list[int], ids: list[int], logprobs: list[float]) -> Completion:
        finish = "stop" if ids and ids[-1] in self.eos_ids else "length"
        return Completion(text=self.tokenizer.decode(ids, skip_special_tokens=True), prompt_ids=prompt,
                          completion_ids=ids, logprobs=logprobs, finish_reason=finish)
