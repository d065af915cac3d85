import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import random  # noqa: E402

import pytest  # noqa: E402
import urllib3.util.connection  # noqa: E402,F401  (probes IPv6 with a socket at import; do it before sockets are blocked)
from espl_bench.method.program import Pool, Program  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A 2-layer random Llama with the embedded tokenizer (built once per session, offline)."""
    from tests.fakes import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def rng():
    return random.Random(1234)


def make_program(pid: str, mu: float = 25.0, sigma: float = 25.0 / 3, **principles) -> Program:
    return Program(id=pid, principles=dict(principles), mu=mu, sigma=sigma)


@pytest.fixture
def pool_of():
    def build(*specs) -> Pool:
        programs = [make_program(f"p{i}", mu, sigma) for i, (mu, sigma) in enumerate(specs)]
        return Pool(programs)

    return build
