"""Multi-turn rollouts on the embedded model, re-encoding every turn against continuing from the
previous turn's keys and values (agents/prefix_cache.py).

    python scripts/measure_prefix_cache.py [--env espl/ToolUse-v0] [--episodes 8] [--max-new-tokens 64]

Runs the same episodes (train problems 0..N-1, one seed each) twice in one process, alternating
which goes first over ``--rounds``, and prints one JSON object: per path the wall seconds, the
tokens generated and per second, the prompt tokens the model encoded (and, reusing, those taken
from the store), and how far the two paths agree (identical episodes; the largest log-probability
gap before an episode's first differing token, and where that token is).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

from espl_bench.agents import prefix_cache
from espl_bench.agents.rollout import EpisodeSpec, RolloutEngine
from espl_bench.agents.sampler import SamplingParams, TransformersSampler
from espl_bench.envs.registry import make_env
from espl_bench.training.models import DEFAULT_MODEL, resolve_model


class Plain:
    """The sampler without ``reusing_cache``: every turn re-encodes its conversation."""

    def __init__(self, inner: TransformersSampler):
        self.inner = inner

    def generate(self, *args, **kwargs):
        return self.inner.generate(*args, **kwargs)

    def continuation(self, *args):
        return self.inner.continuation(*args)


def run(engine: RolloutEngine, specs: list[EpisodeSpec], params: SamplingParams, reuse: bool) -> tuple[dict, list]:
    started = time.monotonic()
    with prefix_cache.session() if reuse else contextlib.nullcontext() as store:
        rollouts = engine.run(specs, params)
    seconds = time.monotonic() - started
    tokens = sum(r.generated_tokens for r in rollouts)
    # without the store, every prompt token of every turn is encoded: the record's tokens before each reply
    encoded = store.counts.encoded if store is not None else sum(_prompt_tokens(r) for r in rollouts)
    return {"seconds": round(seconds, 1), "generated_tokens": tokens, "tokens_per_second": round(tokens / seconds, 1),
            "turns": sum(r.turns for r in rollouts), "prompt_tokens_encoded": encoded,
            "prompt_tokens_reused": store.counts.reused if store is not None else 0}, rollouts


def _prompt_tokens(rollout) -> int:
    """Tokens before each of the rollout's replies (what re-encoding feeds each turn)."""
    total, seen = 0, len(rollout.prompt_ids)
    for i, mask in enumerate(rollout.env_mask):
        if mask == 1 and (i == 0 or rollout.env_mask[i - 1] == 0):
            total += seen
        seen += 1
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="espl/ToolUse-v0")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(DEFAULT_MODEL)
    sampler = TransformersSampler(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path))
    specs = [EpisodeSpec("You are a careful problem solver.", "train", i, seed=1000 + i) for i in range(args.episodes)]
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0, seed=0)
    results: dict[str, list[dict]] = {"re-encode": [], "reuse": []}
    for round_ in range(args.rounds):
        order = ["re-encode", "reuse"] if round_ % 2 == 0 else ["reuse", "re-encode"]
        outs = {}
        for name in order:
            inner = sampler if name == "reuse" else Plain(sampler)
            measured, outs[name] = run(RolloutEngine(lambda: make_env(args.env), inner), specs, params, name == "reuse")
            results[name].append(measured)
        agreement = compare(outs["re-encode"], outs["reuse"])
    print(json.dumps({"env": args.env, "episodes": args.episodes, "max_new_tokens": args.max_new_tokens,
                      "rounds": results, "agreement": agreement}, indent=1))


def compare(plain: list, reused: list) -> dict:
    """How far the two paths agree: episodes with identical tokens, and over the tokens both wrote
    before an episode's first difference, the largest log-probability gap."""
    identical, gap, first = 0, 0.0, []
    for a, b in zip(plain, reused):
        n = next((i for i, (x, y) in enumerate(zip(a.completion_ids, b.completion_ids)) if x != y),
                 min(len(a.completion_ids), len(b.completion_ids)))
        identical += a.completion_ids == b.completion_ids
        gap = max([gap, *(abs(x - y) for x, y in zip(a.logprobs[:n], b.logprobs[:n]))])
        if a.completion_ids != b.completion_ids:
            first.append({"episode": a.spec.index, "first_difference_at_token": n, "of": len(a.completion_ids),
                          "logprobs_there": [round(a.logprobs[n], 3) if n < len(a.logprobs) else None,
                                             round(b.logprobs[n], 3) if n < len(b.logprobs) else None]})
    return {"identical_episodes": identical, "of": len(plain), "max_logprob_gap_before_a_difference": gap,
            "differences": first}


if __name__ == "__main__":
    main()
