"""Structured output for the in-process sampler: a JSON schema as a grammar that masks each row's
next token, with llguidance (the engine vLLM also uses) driving transformers' generation.

:class:`Grammars` compiles schemas for one tokenizer (cached); :class:`GrammarMask` is the
``transformers`` logits processor: before each step it feeds every constrained row's last token
to that row's matcher, then sets the scores of tokens the grammar does not allow to ``-inf``. A
row whose grammar is complete may only end (EOS), so a constrained answer stops as soon as it is
whole. Rows without a grammar are left alone. A matcher that enters its error state (it cannot
happen for a token it allowed, but a grammar can exhaust its limits) ends its row; the caller
sees an answer that does not parse, as data. A batch whose every row is structured does not go
through ``generate`` but through :mod:`espl_bench.agents.fast_forward`, which also feeds the
tokens a grammar forces in one forward; both read the mask from :func:`allowed_tokens`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence


class Grammars:
    """JSON schemas compiled for one tokenizer; thread-safe (the reflector batches from one thread,
    the loop samples from another)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._llg_tokenizer = None
        self._grammars: dict[str, str] = {}
        self._lock = threading.Lock()

    def _tokenizer(self):
        import llguidance.hf

        with self._lock:
            if self._llg_tokenizer is None:  # about a second: once per sampler
                self._llg_tokenizer = llguidance.hf.from_tokenizer(self.tokenizer)
            return self._llg_tokenizer

    def matcher(self, schema: dict):
        """A fresh matcher of ``schema`` (one per row: matchers keep their row's state)."""
        import llguidance

        key = json.dumps(schema, sort_keys=True)
        tokenizer = self._tokenizer()
        with self._lock:
            if key not in self._grammars:
                # No free whitespace between JSON tokens: a model could otherwise pad an answer
                # with blank lines up to its token budget (a random one does).
                self._grammars[key] = llguidance.LLMatcher.grammar_from_json_schema(
                    schema, overrides={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "})
            grammar = self._grammars[key]
        return llguidance.LLMatcher(tokenizer, grammar, log_level=0)


class GrammarMask:
    """The logits processor; see the module docstring."""

    def __init__(self, matchers: Sequence[object | None], eos_ids: set[int]):
        self.matchers = list(matchers)
        self.eos_ids = sorted(eos_ids)
        self.done = [m is None for m in self.matchers]
        self.started = False

    def __call__(self, input_ids, scores):
        if self.started:
            for row, matcher in enumerate(self.matchers):
                if matcher is not None and not self.done[row]:
                    token = int(input_ids[row, -1])
                    if token in self.eos_ids or not matcher.consume_token(token):
                        self.done[row] = True
        self.started = True
        vocab = scores.shape[-1]
        for row, matcher in enumerate(self.matchers):
            if matcher is None:
                continue
            allowed = allowed_tokens(None if self.done[row] else matcher, vocab, self.eos_ids)
            scores[row] = scores[row].masked_fill(~allowed.to(scores.device), float("-inf"))
        return scores


def allowed_tokens(matcher, vocab: int, eos_ids):
    """The tokens ``matcher`` allows next, a boolean tensor over ``vocab``: only EOS once the row
    is done (``None``), its grammar complete, in its error state, or left with nothing to allow."""
    import torch
    from llguidance.torch import allocate_token_bitmask, fill_next_token_bitmask

    eos = sorted(eos_ids)
    if matcher is None or matcher.is_error() or matcher.is_stopped():
        allowed = torch.zeros(vocab, dtype=torch.bool)
        allowed[eos] = True
        return allowed
    mask = allocate_token_bitmask(1, vocab)
    fill_next_token_bitmask(matcher, mask, 0)
    allowed = ((mask[0].unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1).bool().flatten()[:vocab]
    if not bool(allowed.any()):
        allowed[eos] = True
    return allowed
