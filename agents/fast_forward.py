"""Structured decoding that skips the tokens a grammar forces (llguidance's fast-forward tokens).

Under an edit-operation schema a third to a half of an answer's tokens are forced: after
``{"ops": [{"op": "`` only the kind is the model's choice, after ``add`` only ``", "text": "``
can follow. ``transformers``' ``generate`` spends one forward step on each of them. Here a
row's sampled token and the forced tokens after it (``LLMatcher.compute_ff_tokens``) go through
the model in one forward (SGLang's jump-forward decoding); on a CPU a forward of a few tokens costs
little more than one, so an answer takes about as many steps as it has free choices.

The loop is transformers' own parts around one forward call per step: the model with its KV
cache (``DynamicCache``), a 2-D attention mask with holes where a row's chunk was shorter than
the batch's, and explicit positions. A row draws from its own generator only where the model
chooses (:class:`~espl_bench.agents.sampler.RowSeededSampling`), so its answer does not depend
on which rows share its batch or how long they run. Logprobs are those of transformers' path
for the tokens the model chose (its scores at ``temperature``) and 0 for forced ones (the
grammar left no other token). A matcher in its error state ends its row, as in
:class:`~espl_bench.agents.grammar.GrammarMask`: the caller sees an answer that does not parse.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence


def generate(model, prompts: Sequence[list[int]], matchers: Sequence, *, pad: int, eos_ids: set[int],
             budgets: Sequence[int], pick, repetition_penalty: float = 1.0,
             temperature: float = 1.0) -> list[tuple[list[int], list[float], str]]:
    """Every row's (new token ids, their logprobs, finish reason) under its matcher.

    ``pick(rows, scores)`` chooses one token per listed row from the masked scores (sampling
    with the rows' own generators, or argmax); ``budgets[i]`` caps row ``i``'s new tokens, forced
    ones included. The finish reason is ``stop`` when the grammar is complete (or the row ended
    in its error state), else ``length``.
    """
    decode = _Decode(model, prompts, matchers, pad, eos_ids, budgets, temperature)
    while any(decode.active):
        live = [r for r in range(decode.rows) if decode.active[r]]
        picked = pick(live, decode.scores(live, repetition_penalty))
        chunks = {r: chunk for k, r in enumerate(live) if (chunk := decode.accept(r, int(picked[k]))) is not None}
        if not chunks:
            break
        decode.forward(chunks)
    return [(decode.new[r], decode.logps[r], decode.finish[r]) for r in range(decode.rows)]


class _Decode:
    """One batch's decoding state: the model's cache and mask, each row's tokens so far."""

    def __init__(self, model, prompts: Sequence[list[int]], matchers: Sequence, pad: int, eos_ids: set[int],
                 budgets: Sequence[int], temperature: float):
        import torch
        from transformers import DynamicCache

        self.torch, self.model, self.matchers, self.pad, self.eos_ids = torch, model, matchers, pad, eos_ids
        self.budgets, self.scale = budgets, temperature if temperature > 0 else 1.0
        self.rows = len(prompts)
        width = max(len(p) for p in prompts)
        device = model.device
        ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
        self.mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        # transformers 5 renames ``past_key_values`` to ``cache`` (the old name warns, then goes)
        name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.cache = {name: DynamicCache()}
        # left padding: every row's last prompt token is last, the only position whose logits are read
        out = model(input_ids=ids, attention_mask=self.mask, position_ids=(self.mask.cumsum(-1) - 1).clamp(min=0),
                    use_cache=True, logits_to_keep=1, **self.cache)
        self.logits = out.logits[:, -1, :].float()
        self.next_pos = self.mask.sum(-1)  # the position each row's next token takes
        self.new: list[list[int]] = [[] for _ in range(self.rows)]
        self.logps: list[list[float]] = [[] for _ in range(self.rows)]
        self.finish = ["length"] * self.rows
        self.active = [budgets[r] > 0 for r in range(self.rows)]

    def scores(self, live: list[int], repetition_penalty: float):
        """The live rows' next-token scores, penalised and masked by their grammars."""
        from espl_bench.agents.grammar import allowed_tokens

        torch = self.torch
        scores = self.logits[live].clone()
        for k, r in enumerate(live):
            if repetition_penalty != 1.0 and self.new[r]:  # transformers' rule, on the reply's own tokens
                seen = torch.tensor(sorted(set(self.new[r])), device=scores.device)
                got = scores[k, seen]
                scores[k, seen] = torch.where(got < 0, got * repetition_penalty, got / repetition_penalty)
            allowed = allowed_tokens(self.matchers[r], scores.shape[-1], self.eos_ids)
            scores[k] = scores[k].masked_fill(~allowed.to(scores.device), float("-inf"))
        return scores

    def accept(self, r: int, token: int) -> list[int] | None:
        """Row ``r`` takes ``token`` and the tokens its grammar then forces; returns what the
        model must read next, or None when the row has ended."""
        matcher = self.matchers[r]
        self.logps[r].append(float(self.torch.log_softmax(self.logits[r] / self.scale, dim=-1)[token]))
        if token in self.eos_ids or not matcher.consume_token(token) or matcher.is_error():
            self._end(r, [token], "stop")
            return None
        forced = [] if matcher.is_stopped() else list(matcher.compute_ff_tokens())
        forced = forced[: max(0, self.budgets[r] - len(self.new[r]) - 1)]
        if forced and not matcher.consume_tokens(forced):  # cannot happen for forced tokens: ends the row
            self._end(r, [token], "stop")
            return None
        chunk = [token, *forced]
        self.logps[r].extend([0.0] * len(forced))
        if matcher.is_stopped():
            self._end(r, chunk, "stop")
            return None
        if len(self.new[r]) + len(chunk) >= self.budgets[r]:
            self._end(r, chunk, "length")
            return None
        self.new[r].extend(chunk)
        return chunk

    def _end(self, r: int, tokens: list[int], finish: str) -> None:
        self.new[r].extend(tokens)
        self.finish[r], self.active[r] = finish, False

    def forward(self, chunks: dict[int, list[int]]) -> None:
        """One forward for every row still going; shorter chunks are padded and masked out."""
        torch, device, rows = self.torch, self.model.device, self.rows
        length = max(len(c) for c in chunks.values())
        step_ids = torch.full((rows, length), self.pad, dtype=torch.long, device=device)
        step_mask = torch.zeros((rows, length), dtype=self.mask.dtype, device=device)
        step_pos = self.next_pos.unsqueeze(-1).repeat(1, length)
        for r, chunk in chunks.items():
            step_ids[r, : len(chunk)] = torch.tensor(chunk, device=device)
            step_mask[r, : len(chunk)] = 1
            step_pos[r] = self.next_pos[r] + torch.arange(length, device=device).clamp(max=len(chunk) - 1)
        self.mask = torch.cat([self.mask, step_mask], dim=-1)
        out = self.model(input_ids=step_ids, attention_mask=self.mask, position_ids=step_pos, use_cache=True,
                         **self.cache)
        for r, chunk in chunks.items():
            self.logits[r] = out.logits[r, len(chunk) - 1].float()
            self.next_pos[r] += len(chunk)
