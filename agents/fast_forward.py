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


def generate(model, prompts: Sequence[list[int]], matchers: Sequence[object], *, pad: int, eos_ids: set[int],
             budgets: Sequence[int], pick, repetition_penalty: float = 1.0,
             temperature: float = 1.0) -> list[tuple[list[int], list[float], str]]:
    """Every row's (new token ids, their logprobs, finish reason) under its matcher.

    ``pick(rows, scores)`` chooses one token per listed row from the masked scores (sampling
    with the rows' own generators, or argmax); ``budgets[i]`` caps row ``i``'s new tokens, forced
    ones included. The finish reason is ``stop`` when the grammar is complete (or the row ended
    in its error state), else ``length``.
    """
    import torch
    from transformers import DynamicCache

    from espl_bench.agents.grammar import allowed_tokens

    rows = len(prompts)
    width = max(len(p) for p in prompts)
    device = model.device
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    # transformers 5 renames ``past_key_values`` to ``cache`` (the old name warns, then goes)
    cache = {"cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values": DynamicCache()}
    # left padding: every row's last prompt token is last, the only position whose logits are read
    out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=True, logits_to_keep=1, **cache)
    logits = out.logits[:, -1, :].float()
    next_pos = mask.sum(-1)  # the position each row's next token takes
    new: list[list[int]] = [[] for _ in range(rows)]
    logps: list[list[float]] = [[] for _ in range(rows)]
    finish = ["length"] * rows
    active = [budgets[r] > 0 for r in range(rows)]
    scale = temperature if temperature > 0 else 1.0
    while any(active):
        live = [r for r in range(rows) if active[r]]
        scores = logits[live].clone()
        for k, r in enumerate(live):
            if repetition_penalty != 1.0 and new[r]:  # transformers' rule, on the reply's own tokens
                seen = torch.tensor(sorted(set(new[r])), device=scores.device)
                got = scores[k, seen]
                scores[k, seen] = torch.where(got < 0, got * repetition_penalty, got / repetition_penalty)
            allowed = allowed_tokens(matchers[r], scores.shape[-1], eos_ids)
            scores[k] = scores[k].masked_fill(~allowed.to(scores.device), float("-inf"))
        picked = pick(live, scores)
        chunks: dict[int, list[int]] = {}
        for k, r in enumerate(live):
            token, matcher = int(picked[k]), matchers[r]
            logps[r].append(float(torch.log_softmax(logits[r] / scale, dim=-1)[token]))
            if token in eos_ids or not matcher.consume_token(token) or matcher.is_error():
                new[r].append(token)
                finish[r], active[r] = "stop", False
                continue
            forced = [] if matcher.is_stopped() else list(matcher.compute_ff_tokens())
            room = budgets[r] - len(new[r]) - 1
            forced = forced[: max(0, room)]
            if forced and not matcher.consume_tokens(forced):  # cannot happen for forced tokens: ends the row
                new[r].append(token)
                finish[r], active[r] = "stop", False
                continue
            chunk = [token, *forced]
            new[r].extend(chunk)
            logps[r].extend([0.0] * len(forced))
            if matcher.is_stopped():
                finish[r], active[r] = "stop", False
            elif len(new[r]) >= budgets[r]:
                active[r] = False
            else:
                chunks[r] = chunk
        if not chunks:
            break
        # One forward for every row still going; shorter chunks are padded and masked out.
        length = max(len(c) for c in chunks.values())
        step_ids = torch.full((rows, length), pad, dtype=torch.long, device=device)
        step_mask = torch.zeros((rows, length), dtype=mask.dtype, device=device)
        step_pos = next_pos.unsqueeze(-1).repeat(1, length)
        for r, chunk in chunks.items():
            step_ids[r, : len(chunk)] = torch.tensor(chunk, device=device)
            step_mask[r, : len(chunk)] = 1
            step_pos[r] = next_pos[r] + torch.arange(length, device=device).clamp(max=len(chunk) - 1)
        mask = torch.cat([mask, step_mask], dim=-1)
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, use_cache=True, **cache)
        for r, chunk in chunks.items():
            logits[r] = out.logits[r, len(chunk) - 1].float()
            next_pos[r] += len(chunk)
    return [(new[r], logps[r], finish[r]) for r in range(rows)]
