"""The start-up check of ``--sampler vllm``'s weight sync, against a stand-in vLLM HTTP server.

The stand-in answers the endpoints the sampler uses (``/health``, ``/v1/models``,
``/v1/completions``, ``/v1/load_lora_adapter``) as vLLM 0.32 does, on 127.0.0.1. It plays three
servers: one on this machine (it reads the adapter folder), one on another machine (the folder
is not on its filesystem: vLLM's "No adapter found"), and one started without
``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` (no such route: 404). The real server's answer to an
unreadable folder is checked in tests/test_vllm.py.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from espl_bench.agents.vllm_sampler import SamplerRequestError, VLLMSampler
from espl_bench.training.policy import check_adapter_sync

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])


class StandIn(BaseHTTPRequestHandler):
    """vLLM's answers; ``server.kind`` is ``local``, ``remote`` or ``no-runtime-lora``."""

    def log_message(self, *args) -> None:
        return None

    def answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            return self.answer(200, {})
        cards = [{"id": "base", "root": "/models/base", "max_model_len": 2048}]
        cards += [{"id": name, "root": root, "parent": "base"} for name, root in self.server.adapters.items()]
        return self.answer(200, {"data": cards})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))
        if self.path == "/v1/completions":  # the logprobs-mode probe of a connected server
            top = -0.5 / body.get("temperature", 1.0)
            return self.answer(200, {"choices": [{"logprobs": {"top_logprobs": [{"x": top}]}}]})
        if self.path != "/v1/load_lora_adapter" or self.server.kind == "no-runtime-lora":
            return self.answer(404, {"detail": "Not Found"})
        path = body["lora_path"] if self.server.kind == "local" else "/elsewhere" + body["lora_path"]
        if not (Path(path) / "adapter_config.json").is_file():
            message = f"Loading lora {body['lora_name']} failed: No adapter found for {path}"
            return self.answer(404, {"error": {"message": message, "type": "NotFoundError", "code": 404}})
        self.server.adapters[body["lora_name"]] = body["lora_path"]
        return self.answer(200, {})


@pytest.fixture
def stand_in(request):
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    server.kind, server.adapters, server.requests = request.param, {}, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def initial_adapter(tiny_model):
    """The learner's step-0 policy: a fresh peft LoRA on the tiny model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    return get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))


def url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.mark.parametrize("stand_in", ["local"], indirect=True)
def test_a_server_that_reads_the_run_folder_passes_and_samples_the_base_until_step_1(
        stand_in, initial_adapter, tiny_model, tmp_path):
    sampler = VLLMSampler(url(stand_in), tiny_model)
    check_adapter_sync(sampler, initial_adapter, tmp_path / "learner")
    ((path, body),) = [r for r in stand_in.requests if r[0] == "/v1/load_lora_adapter"]
    assert body["lora_name"] == "policy" and Path(body["lora_path"]).parent == (tmp_path / "learner").resolve()
    assert not Path(body["lora_path"]).exists(), "the check's adapter folder was left behind"
    assert sampler.model_name == sampler.base_model_name


@pytest.mark.parametrize("stand_in, fix", [
    ("remote", "cannot read the run folder.*--sampler trl-vllm --trl-vllm-mode server"),
    ("no-runtime-lora", "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"),
], indirect=["stand_in"])
def test_a_server_that_cannot_load_the_runs_adapters_is_one_clear_error(stand_in, fix, initial_adapter, tiny_model,
                                                                         tmp_path):
    sampler = VLLMSampler(url(stand_in), tiny_model)
    with pytest.raises(SamplerRequestError, match=f"could not load the LoRA adapter.*fix: .*{fix}") as failure:
        check_adapter_sync(sampler, initial_adapter, tmp_path / "learner")
    assert "\n" not in str(failure.value)
    assert not list((tmp_path / "learner").glob("sync-check-*"))


@pytest.mark.parametrize("stand_in", ["remote"], indirect=True)
def test_a_run_against_a_server_on_another_machine_stops_before_its_first_rollout(stand_in, tiny_model, tmp_path,
                                                                                  caplog):
    from espl_bench.running.cli import main

    code = main(["run", "--env", "espl/Arithmetic-v0", "--method", "rl", "--sampler", "vllm", "--vllm-url", url(stand_in),
                 "--model", str(tiny_model), "--iterations", "1", "--programs", "1", "--batch-size", "2",
                 "--group-size", "2", "--out", str(tmp_path / "run")])
    assert code == 2
    (error,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "cannot read the run folder" in error
    # No rollout was asked for: the only completions were the connect-time logprobs-mode probe.
    assert [b["max_tokens"] for p, b in stand_in.requests if p == "/v1/completions"] == [1, 1]
    assert not (tmp_path / "run" / "run.json").exists()
