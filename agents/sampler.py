"""The ``Sampler`` seam: chat prompts in, completions with token ids and logprobs out.

Contract:
    ``generate(conversations, params, prompt_ids=None, seeds=None)`` returns exactly one
    :class:`Completion` per conversation, in order. Every completion carries the prompt's token ids (as the learner will tokenize
    them), the sampled token ids, and the per-token log-probabilities under the sampling
    distribution (temperature applied, before top-p truncation), which TRL uses for its
    importance-sampling correction.

Seeding:
    ``seeds[i]``, when given, seeds conversation ``i`` on its own: a sampler that honours it
    (the in-process transformers sampler) draws row ``i``'s tokens from a generator of its own,
    so a reply depends on its seed and prompt, never on what else shares the batch (nanochat's
    rule: a sample is seeded from its own coordinates). Without ``seeds`` the rows are seeded from
    ``params.seed`` and their position. Samplers that cannot seed a request (a vLLM server on
    CPU, hosted APIs) accept ``seeds`` and say so in their docstring.

Error policy:
    A backend failure that affects the whole batch (model missing, out of memory) raises; a single
    degenerate completion (empty, truncated) is returned as data with its ``finish_reason``.

Thread safety:
    One caller at a time per sampler: the loop's thread (rollouts, evaluation), or the one
    serving thread of a local reflector (:class:`espl_bench.agents.reflector.LocalModels`). The
    in-process sampler shares its model with the learner, which trains only between the loop's
    ``submit`` and ``wait`` while the sampler is idle (:mod:`espl_bench.method.learning`). The
    server and API samplers are safe to call concurrently.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from espl_bench.agents import prefix_cache

if TYPE_CHECKING:
    from espl_bench.agents.grammar import Grammars

log = logging.getLogger(__name__)

Message = dict[str, str]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``seed`` seeds a call whose rows have no seeds of their own."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    stop: tuple[str, ...] = ()  # a reply ends at the first of these strings (reflection's free text only)
    # > 1 penalises tokens already in the row (the in-process reflector's decoding only: a policy
    # sample must come from the policy's own distribution, which the learner scores)
    repetition_penalty: float = 1.0


@dataclass(frozen=True)
class Completion:
    """One sampled answer, with everything the learner needs to train on it."""

    text: str
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    finish_reason: str = "stop"  # "stop" (EOS) or "length" (hit max_new_tokens)
    metadata: dict = field(default_factory=dict)


class Sampler(Protocol):
    """Generates completions for chat conversations with the current policy weights."""

    def generate(self, conversations: Sequence[list[Message]], params: SamplingParams,
                 prompt_ids: Sequence[list[int] | None] | None = None,
                 seeds: Sequence[int] | None = None) -> list[Completion]:
        """One completion per conversation, same order. See the module docstring for the contract.

        ``prompt_ids[i]``, when given, is the exact token sequence to continue for conversation
        ``i`` (multi-turn episodes pass their own record so that no turn is re-tokenized);
        ``seeds[i]`` seeds conversation ``i`` alone.
        """
        ...

    def continuation(self, history: list[Message], new: list[Message], ended_with_eos: bool) -> list[int]:
        """Token ids that follow the last reply of ``history`` when ``new`` messages are added,
        up to and including the prompt for the next reply."""
        ...


class ChatTokens:
    """Prompt token ids from the chat template, one definition for every sampler (uses ``self.tokenizer``)."""

    tokenizer: Any  # a transformers tokenizer (its type comes with the model)

    def encode(self, conversation: list[Message]) -> list[int]:
        """Token ids of ``conversation`` rendered by the chat template, ready for the reply."""
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def continuation(self, history: list[Message], new: list[Message], ended_with_eos: bool) -> list[int]:
        return chat_continuation(self.tokenizer, history, new, ended_with_eos)

    def prompts(self, conversations: Sequence[list[Message]],
                prompt_ids: Sequence[list[int] | None] | None = None) -> list[list[int]]:
        """The token ids each reply continues: ``prompt_ids[i]`` when given, else the rendered conversation."""
        given = list(prompt_ids) if prompt_ids is not None else [None] * len(conversations)
        return [list(ids) if ids is not None else self.encode(c) for c, ids in zip(conversations, given)]


class TransformersSampler(ChatTokens):
    """In-process sampling with Hugging Face ``generate``, batched and length-sorted.

    It samples from ``model`` as it is at call time, so when the learner trains that same model
    object (LoRA in place) every call already uses the current policy: no weight sync needed.
    """

    def __init__(self, model, tokenizer, *, max_batch_size: int = 32, max_context: int | None = None):
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_context = max_context  # prompt plus reply, in tokens; None: not checked
        self._torch = torch
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._eos_ids = eos_ids(model, tokenizer)
        self._grammars: Grammars | None = None  # compiled on the first structured request
        self._reusable = not slides(model)  # a sliding-window cache does not hold the whole sequence

    # The in-process reflector batches requests of different token budgets together (see budgets).
    row_budgets = True
    # Batches whose every row is structured skip the tokens the grammar forces (agents/fast_forward.py).
    fast_forward = True

    def generate(self, conversations: Sequence[list[Message]], params: SamplingParams,
                 prompt_ids: Sequence[list[int] | None] | None = None,
                 seeds: Sequence[int] | None = None, schemas: Sequence[dict | None] | None = None,
                 budgets: Sequence[int] | None = None) -> list[Completion]:
        """The seam's ``generate``; ``schemas[i]``, when given, is a JSON schema conversation ``i``'s
        reply must follow (structured output through :mod:`espl_bench.agents.grammar`);
        ``budgets[i]`` (at most ``params.max_new_tokens``) caps reply ``i`` below the call's cap: the
        reply is what it would be alone with ``max_new_tokens=budgets[i]`` (its draws are its own)."""
        encoded = self.prompts(conversations, prompt_ids)
        row_seeds = list(seeds) if seeds is not None else [derive_seed(params.seed, i) for i in range(len(encoded))]
        row_schemas = list(schemas) if schemas is not None else [None] * len(encoded)
        row_budgets = [min(int(b), params.max_new_tokens) for b in budgets] if budgets is not None else \
            [params.max_new_tokens] * len(encoded)
        if not (len(row_seeds) == len(row_schemas) == len(row_budgets) == len(encoded)):
            raise ValueError(f"{len(row_seeds)} seeds, {len(row_schemas)} schemas and {len(row_budgets)} budgets for "
                             f"{len(encoded)} conversations")
        self._check_context(encoded, row_budgets)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        results: list[Completion | None] = [None] * len(encoded)
        torch = self._torch
        # fork_rng keeps the caller's global torch RNG untouched (sampling draws from per-row generators).
        device = self.model.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad(), \
                _eval_mode(self.model):
            for start in range(0, len(order), self.max_batch_size):
                chunk = order[start : start + self.max_batch_size]
                cap = max(row_budgets[i] for i in chunk)
                batch = self._generate_batch([encoded[i] for i in chunk], replace(params, max_new_tokens=cap),
                                             [row_seeds[i] for i in chunk], [row_schemas[i] for i in chunk],
                                             [row_budgets[i] for i in chunk])
                for i, completion in zip(chunk, batch):
                    results[i] = completion
        return [r for r in results if r is not None]

    def _check_context(self, prompts: list[list[int]], budgets: list[int]) -> None:
        """One clear error for a prompt that leaves its reply budget no room: past its positions a
        model's replies are garbage, not an error of their own."""
        if self.max_context is None:
            return
        longest = max(range(len(prompts)), key=lambda i: len(prompts[i]) + budgets[i], default=None)
        if longest is not None and len(prompts[longest]) + budgets[longest] > self.max_context:
            from espl_bench.errors import ConfigError

            raise ConfigError(f"a prompt of {len(prompts[longest])} tokens plus its reply budget of {budgets[longest]} "
                              f"exceeds the policy's context of {self.max_context} tokens; fix: raise --max-context "
                              "(at most the model's max_position_embeddings), lower --max-new-tokens, or shorten the "
                              "env's prompts")

    def reusing_cache(self) -> contextlib.AbstractContextManager:
        """A block in which a call whose prompt extends a row this thread generated feeds only the
        new tokens (:mod:`espl_bench.agents.prefix_cache`)."""
        return prefix_cache.session() if self._reusable else contextlib.nullcontext()

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams, seeds: list[int],
                        schemas: list[dict | None], budgets: list[int]) -> list[Completion]:
        structured = [schema for schema in schemas if schema is not None]
        if self.fast_forward and len(structured) == len(schemas) and not params.stop:
            return self._fast_forward_batch(prompts, params, seeds, structured, budgets)
        torch = self._torch
        pad = self.tokenizer.pad_token_id
        device = self.model.device  # the learner's model sits on the GPU when there is one
        store = prefix_cache.current() if self._reusable else None
        batch = prefix_cache.inputs(torch, store, prompts, pad, device)  # plain left padding when nothing reuses
        width = len(batch.input_ids[0])
        processors, chosen = self._processors(params, seeds, schemas, budgets, width)
        out = self.model.generate(
            input_ids=torch.tensor(batch.input_ids, device=device),
            attention_mask=torch.tensor(batch.attention, device=device),
            max_new_tokens=params.max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            logits_processor=processors,
            **({"stop_strings": list(params.stop), "tokenizer": self.tokenizer} if params.stop else {}),
            pad_token_id=pad,
            eos_token_id=sorted(self._eos_ids),
            # Training with gradient checkpointing sets the model's use_cache to False; generating
            # without the KV cache recomputes the whole sequence at every step (3x slower here).
            use_cache=True,
            # In a reuse session: the rows' keys and values come back to be kept, and go in when stored.
            **({"return_dict_in_generate": True} if store is not None else {}),
            **({prefix_cache.cache_name(): batch.cache} if batch.cache is not None else {}),
        )
        sequences = out.sequences if store is not None else out
        new_tokens = sequences[:, width:]
        replies = [_trim(new_tokens[row].tolist()[: budgets[row]], self._eos_ids)  # RowBudget's forced EOS goes
                   for row in range(len(prompts))]
        if store is not None:
            prefix_cache.keep(torch, store, getattr(out, prefix_cache.cache_name()), batch.attention, prompts,
                              [ids for ids, _ in replies], width)
        logps = chosen.finish(sequences)
        return [self._completion(prompt, ids, finish, logps[row, :len(ids)], params.stop)
                for row, (prompt, (ids, finish)) in enumerate(zip(prompts, replies))]

    def _processors(self, params: SamplingParams, seeds: list[int], schemas: list[dict | None], budgets: list[int],
                    width: int) -> tuple[list, ChosenLogprobs]:
        """The logits processors of one batch, and the one that keeps the chosen tokens' log-probabilities."""
        # Sampling happens in a logits processor with one generator per row; generate's own
        # search is then greedy over a one-hot score, so no draw is shared between rows.
        processors: list = [RowSeededSampling(seeds, params.temperature, params.top_p)] if params.temperature > 0 else []
        if params.repetition_penalty != 1.0:
            from transformers import RepetitionPenaltyLogitsProcessor

            # the reply's own tokens only: penalising the prompt's words pushes a small model into symbols
            processors.insert(0, RepetitionPenaltyLogitsProcessor(params.repetition_penalty, prompt_ignore_length=width))
        if any(schema is not None for schema in schemas):
            from espl_bench.agents.grammar import GrammarMask

            processors.insert(0, GrammarMask(self._matchers(schemas), self._eos_ids))
        if min(budgets) < params.max_new_tokens:
            processors.append(RowBudget(budgets, width, min(self._eos_ids)))
        # First: it keeps the very scores generate hands on, before any of ours replaces them.
        chosen = ChosenLogprobs(params.temperature)
        processors.insert(0, chosen)
        return processors, chosen

    def _completion(self, prompt: list[int], ids: list[int], finish: str, logps, stops: Sequence[str]) -> Completion:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for stop in stops:
            if stop in text:
                text, finish = text[: text.index(stop)], "stop"
        return Completion(text=text, prompt_ids=list(prompt), completion_ids=ids, logprobs=[float(x) for x in logps],
                          finish_reason=finish)

    def _matchers(self, schemas: Sequence[dict | None]) -> list:
        from espl_bench.agents.grammar import Grammars

        if self._grammars is None:
            self._grammars = Grammars(self.tokenizer)
        return [None if schema is None else self._grammars.matcher(schema) for schema in schemas]

    def _fast_forward_batch(self, prompts: list[list[int]], params: SamplingParams, seeds: list[int],
                            schemas: list[dict], budgets: list[int]) -> list[Completion]:
        """Every row structured: the tokens its grammar forces go through the model together
        (:mod:`espl_bench.agents.fast_forward`)."""
        from espl_bench.agents import fast_forward

        sampling = RowSeededSampling(seeds, params.temperature, params.top_p) if params.temperature > 0 else None

        def pick(rows, scores):
            return (scores if sampling is None else sampling.pick(rows, scores)).argmax(dim=-1)

        rows = fast_forward.generate(self.model, prompts, self._matchers(schemas), pad=self.tokenizer.pad_token_id,
                                     eos_ids=self._eos_ids, budgets=budgets, pick=pick,
                                     repetition_penalty=params.repetition_penalty, temperature=params.temperature)
        return [Completion(text=self.tokenizer.decode(ids, skip_special_tokens=True), prompt_ids=list(prompt),
                           completion_ids=ids, logprobs=logps, finish_reason=finish)
                for prompt, (ids, logps, finish) in zip(prompts, rows)]


def derive_seed(*coordinates) -> int:
    """A seed that is a pure function of ``coordinates`` (ints and strings), in [0, 2**31)."""
    import hashlib

    text = "/".join(str(c) for c in coordinates)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big") % 2**31


class RowSeededSampling:
    """A ``transformers`` logits processor that samples every row from a generator of its own.

    Temperature, then top-p (transformers' own ``TopPLogitsWarper``), then inverse-CDF sampling
    with one uniform draw per row and step from ``torch.Generator(seed)``; the chosen token gets
    score 0 and every other one ``-inf``, so greedy search emits it. A row's t-th token uses the
    t-th draw of its own generator whatever the rest of the batch holds or how long it runs.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        import torch
        from transformers import TopPLogitsWarper

        self._torch = torch
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature = temperature
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1.0 else None

    def __call__(self, input_ids, scores):
        return self.pick(range(len(self.generators)), scores)

    def pick(self, rows: Sequence[int], scores):
        """The processor for the listed ``rows`` only (``scores`` holds those rows, in that order):
        each draws from its own generator, the others draw nothing."""
        torch = self._torch
        generators = [self.generators[r] for r in rows]
        logits = scores.float() / self.temperature
        if self.top_p is not None:
            logits = self.top_p(None, logits)
        cdf = torch.softmax(logits, dim=-1).cumsum(dim=-1)
        # 1 - U(0, 1) lies in (0, 1]: the first token whose cdf reaches it has nonzero mass.
        u = torch.stack([1.0 - torch.rand((), generator=g) for g in generators]).to(cdf.device)
        picked = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1)).clamp_(max=cdf.shape[-1] - 1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, picked, 0.0)


class ChosenLogprobs:
    """A ``transformers`` logits processor (the first) that keeps one log-probability per row and
    step: the chosen token's under the model's scores at the sampling temperature.

    A processor sees a step's scores before its token is chosen, so it holds a copy of them (one
    rows x vocabulary tensor) until the next call, whose ``input_ids``
    end with the token chosen from them; :meth:`finish` settles the last step from the sequences.
    At most one step's scores are ever kept, instead of every step's (``output_logits``).
    """

    def __init__(self, temperature: float):
        import torch

        self._torch = torch
        self.scale = temperature if temperature > 0 else 1.0  # greedy: the model's own distribution
        self.pending = None
        self.steps: list = []

    def __call__(self, input_ids, scores):
        self._settle(input_ids[:, -1])
        # A copy: the grammar and budget processors after this one write into ``scores`` in place,
        # and the log-probability wanted is the model's own (what the trainer recomputes).
        self.pending = scores.clone()
        return scores

    def _settle(self, chosen) -> None:
        if self.pending is not None:
            logps = self._torch.log_softmax(self.pending.float() / self.scale, dim=-1)
            self.steps.append(logps.gather(-1, chosen.unsqueeze(-1)).squeeze(-1))
            self.pending = None

    def finish(self, sequences):
        """The (rows x steps) log-probabilities of the tokens ``sequences`` ends with."""
        self._settle(sequences[:, -1])
        return self._torch.stack(self.steps, dim=1)


class RowBudget:
    """A ``transformers`` logits processor (the last one) that ends row ``i`` after ``budgets[i]``
    new tokens by forcing an EOS, which the sampler then cuts off: the row stops costing draws
    and its reply is what a call of its own budget gives."""

    def __init__(self, budgets: Sequence[int], prompt_width: int, eos_id: int):
        self.budgets, self.prompt_width, self.eos_id = list(budgets), prompt_width, eos_id

    def __call__(self, input_ids, scores):
        generated = input_ids.shape[1] - self.prompt_width
        for row, budget in enumerate(self.budgets):
            if generated >= budget:
                scores[row] = float("-inf")
                scores[row, self.eos_id] = 0.0
        return scores


class AdapterDisabled:
    """The base weights of a peft model that a :class:`TransformersSampler` samples: every call
    runs with the LoRA adapter switched off (``PeftModel.disable_adapter``), the model untouched."""

    def __init__(self, sampler: TransformersSampler):
        self.sampler = sampler
        self.tokenizer = sampler.tokenizer

    def generate(self, conversations: Sequence[list[Message]], params: SamplingParams,
                 prompt_ids: Sequence[list[int] | None] | None = None,
                 seeds: Sequence[int] | None = None) -> list[Completion]:
        with self.sampler.model.disable_adapter():
            return self.sampler.generate(conversations, params, prompt_ids, seeds)

    def continuation(self, history: list[Message], new: list[Message], ended_with_eos: bool) -> list[int]:
        return self.sampler.continuation(history, new, ended_with_eos)

    def encode(self, conversation: list[Message]) -> list[int]:
        return self.sampler.encode(conversation)

    def reusing_cache(self) -> contextlib.AbstractContextManager:
        return self.sampler.reusing_cache()  # every call in the block runs with the adapter off


def chat_continuation(tokenizer, history: list[Message], new: list[Message], ended_with_eos: bool) -> list[int]:
    """What the chat template puts between the end of the last reply and the next reply.

    Rendering the whole conversation again and re-tokenizing it can split the model's own reply
    into different tokens than it sampled; instead the record keeps the sampled tokens and
    appends only this continuation: the template's end-of-turn text after the reply (minus the
    EOS the model already produced), the new messages, and the generation prompt.
    """
    reply = history[-1]["content"]
    before = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=False)
    full = tokenizer.apply_chat_template(history + new, tokenize=False, add_generation_prompt=True)
    cut = len(before) if full.startswith(before) else _common_prefix(before, full)
    at = before.rfind(reply.strip() if reply.strip() else reply, 0, cut)
    tail = before[at + len(reply.strip()):cut] if reply.strip() and at >= 0 else before[cut:cut]
    eos = tokenizer.eos_token or ""
    if ended_with_eos and eos and tail.startswith(eos):
        tail = tail[len(eos):]
    return list(tokenizer(tail + full[cut:], add_special_tokens=False)["input_ids"])


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _trim(ids: list[int], eos_ids: set[int]) -> tuple[list[int], str]:
    """The reply's tokens (EOS included, padding after it dropped) and the finish reason."""
    for i, tok in enumerate(ids):
        if tok in eos_ids:
            return ids[: i + 1], "stop"
    return ids, "length"


def model_context(model) -> int | None:
    """The positions ``model`` was built for (None when its config does not say)."""
    config: Any = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "max_position_embeddings", None) or None


def slides(model) -> bool:
    """Whether some attention layer of ``model`` sees only a sliding window of the sequence."""
    config: Any = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if "sliding_attention" in (getattr(text, "layer_types", None) or ()):
        return True
    return bool(getattr(text, "sliding_window", None)) and getattr(text, "use_sliding_window", True) is not False


def eos_ids(model, tokenizer) -> set[int]:
    """Every token id that ends a reply (the generation config may list several)."""
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    if ids is None:
        ids = tokenizer.eos_token_id
    return set(ids if isinstance(ids, list) else [ids])


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()
