"""Multi-turn generation that continues from what the previous turn computed.

A multi-turn episode's next prompt is its last prompt, the reply, and the environment's answer:
re-encoding all of it at every turn makes turn ``t`` cost the whole conversation. Inside a
:class:`PrefixStore` session (``RolloutEngine.run`` opens one), :class:`~espl_bench.agents.sampler.TransformersSampler`
keeps each row's key/value tensors after a call, and the next call whose prompt extends that row's
tokens feeds only the new tokens, the stored tensors standing in for the rest.

Layout of a batch that reuses: row ``i`` reuses ``n_i`` tokens and feeds ``r_i`` new ones; with
``C = max n_i`` and ``R = max r_i`` its input is ``pad(C - n_i) + cached + pad(R - r_i) + new``
and its attention mask is 0 on both pads. Positions come from the mask (as for left padding), so
every real token sits where it sat when it was first encoded and the outputs are today's within
floating-point tolerance (tests/test_prefix_cache.py). A store lives only as long as its session
and only for the thread that opened it: the weights cannot change under it (the in-process sampler
and the learner take turns), and a reflector's call on another thread never sees it.

The store is bounded (:data:`LIMIT_BYTES`): a row that would pass the bound is not kept (its next
turn re-encodes), and the engine drops, after each turn, the rows of episodes that ended.

Reuse needs every layer's cache to hold the whole sequence; a model whose cache keeps less (a
sliding window) is left to re-encode, as before. The vLLM server's own prefix cache does the same
for ``--sampler vllm`` (``--enable-prefix-caching``, agents/vllm_server.py).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any


@functools.cache
def cache_name() -> str:
    """generate's cache argument and output field: transformers renamed ``past_key_values`` to
    ``cache`` within 5.x, and its output dataclass says which name the installed version uses."""
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    return "cache" if "cache" in GenerateDecoderOnlyOutput.__dataclass_fields__ else "past_key_values"


# What a store may hold: the rows of one turn of a batch (an 8B policy's 1,000-token row is about
# 150 MB in bfloat16; the embedded model's is 20 MB in float32).
LIMIT_BYTES = 2 * 2**30


@dataclass
class Entry:
    """One row's tokens and, per layer, its key and value tensors (``[heads, len(tokens), dim]``)."""

    tokens: list[int]
    layers: list[tuple[Any, Any]]
    nbytes: int = 0


@dataclass
class Counts:
    """What a session saved: prompt tokens the model encoded, and those it took from the store."""

    encoded: int = 0
    reused: int = 0


@dataclass
class PrefixStore:
    """The rows a session's calls generated, found again by their tokens."""

    entries: list[Entry] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    limit: int = LIMIT_BYTES

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self.entries)

    def retain(self, prompts: Sequence[Sequence[int]]) -> None:
        """Drop every row that no prompt in ``prompts`` (the next turn's) begins."""
        self.entries = [e for e in self.entries
                        if any(len(p) > len(e.tokens) and list(p[:len(e.tokens)]) == e.tokens for p in prompts)]

    def take(self, prompt: Sequence[int]) -> Entry | None:
        """The longest stored row whose tokens begin ``prompt`` and leave at least one token to feed,
        removed from the store (an episode's next turn stores its longer row)."""
        best = None
        for entry in self.entries:
            n = len(entry.tokens)
            if n < len(prompt) and (best is None or n > len(best.tokens)) and list(prompt[:n]) == entry.tokens:
                best = entry
        if best is not None:
            self.entries.remove(best)
        return best


_local = threading.local()


def current() -> PrefixStore | None:
    """This thread's open store, if a session is open."""
    return getattr(_local, "store", None)


@contextlib.contextmanager
def session() -> Iterator[PrefixStore]:
    """Keep rows for reuse until the block ends (nested sessions share the outer store)."""
    outer = current()
    if outer is not None:
        yield outer
        return
    _local.store = PrefixStore()
    try:
        yield _local.store
    finally:
        _local.store = None


def retain(prompts: Sequence[Sequence[int]]) -> None:
    """This thread's store, if open, keeps only the rows ``prompts`` can reuse (:meth:`PrefixStore.retain`)."""
    store = current()
    if store is not None:
        store.retain(prompts)


def reusing(sampler) -> contextlib.AbstractContextManager:
    """``sampler.reusing_cache()`` where the sampler has one, else a block that changes nothing."""
    opener = getattr(sampler, "reusing_cache", None)
    return opener() if opener is not None else contextlib.nullcontext()


@dataclass
class Layout:
    """A batch's inputs with the stored rows in front: what ``generate`` is given."""

    input_ids: list[list[int]]
    attention: list[list[int]]
    cache: Any | None  # a DynamicCache of width C, or None when no row reuses anything


def inputs(torch, store: PrefixStore | None, prompts: Sequence[list[int]], pad: int, device) -> Layout:
    """A batch's inputs: each prompt's stored row taken from ``store`` (when one is open), counted."""
    entries = [store.take(p) if store is not None else None for p in prompts]
    if store is not None:
        reused = sum(len(e.tokens) for e in entries if e is not None)
        store.counts.reused += reused
        store.counts.encoded += sum(len(p) for p in prompts) - reused
    return layout(torch, prompts, entries, pad, device)


def layout(torch, prompts: Sequence[list[int]], entries: Sequence[Entry | None], pad: int, device) -> Layout:
    """Row ``i``: ``pad(C - n_i) + cached + pad(R - r_i) + new`` (module docstring)."""
    reused = [len(e.tokens) if e is not None else 0 for e in entries]
    c = max(reused, default=0)
    r = max((len(p) - n for p, n in zip(prompts, reused)), default=0)
    ids, mask = [], []
    for prompt, n in zip(prompts, reused):
        new = len(prompt) - n
        ids.append([pad] * (c - n) + list(prompt[:n]) + [pad] * (r - new) + list(prompt[n:]))
        mask.append([0] * (c - n) + [1] * n + [0] * (r - new) + [1] * new)
    if c == 0:
        return Layout(ids, mask, None)
    from transformers import DynamicCache

    first = next(e for e in entries if e is not None)
    layers = []
    for index in range(len(first.layers)):
        keys, values = (_stack(torch, [None if e is None else e.layers[index][part] for e in entries], c, device)
                        for part in (0, 1))
        layers.append((keys, values))
    return Layout(ids, mask, DynamicCache(layers))


def _stack(torch, rows: Sequence[Any | None], width: int, device):
    """``[batch, heads, width, dim]``: each row's tensor right-aligned, zeros where it is padded."""
    like = next(t for t in rows if t is not None)
    out = torch.zeros((len(rows), like.shape[0], width, like.shape[2]), dtype=like.dtype, device=device)
    for i, t in enumerate(rows):
        if t is not None:
            out[i, :, width - t.shape[1]:, :] = t
    return out


def keep(torch, store: PrefixStore, cache, attention, prompts: Sequence[list[int]], replies: Sequence[list[int]],
         width: int) -> None:
    """Store each row's prompt and reply with their tensors from ``cache`` (what generate returned).

    The cache holds every column fed: the ``width`` prompt columns and all but the last sampled
    token. A row keeps its mask's columns and its reply up to where it ended."""
    layers = [(layer.keys, layer.values) for layer in cache.layers]
    fed = layers[0][0].shape[2] if layers else 0
    if any(k is None or k.shape[2] != fed or v.shape[2] != fed for k, v in layers):
        return  # a cache that keeps less than the whole sequence (a sliding window): nothing to reuse
    per_token = sum(k[0, :, 0].numel() * k.element_size() + v[0, :, 0].numel() * v.element_size() for k, v in layers)
    held = store.nbytes
    for row, (prompt, reply) in enumerate(zip(prompts, replies)):
        kept = min(len(reply), fed - width)
        columns = [j for j, m in enumerate(attention[row]) if m] + list(range(width, width + kept))
        if held + per_token * len(columns) > store.limit:
            continue  # past the bound: this row's next turn re-encodes
        index = torch.tensor(columns, device=layers[0][0].device)
        store.entries.append(Entry(tokens=list(prompt) + list(reply[:kept]),
                                   layers=[(k[row].index_select(1, index), v[row].index_select(1, index))
                                           for k, v in layers], nbytes=per_token * len(columns)))
        held += per_token * len(columns)
