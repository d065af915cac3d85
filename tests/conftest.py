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


@pytest.fixture(scope="session")
def alone(tiny_model, tmp_path_factory):
    """tests/test_resume_kill.py's run, uninterrupted, once per session (the reference of the
    resume and ownership tests): ``(script, folder)``."""
    from tests.test_resume_kill import run_alone

    return run_alone(tiny_model, tmp_path_factory.mktemp("alone"))


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


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The runs a test's grid starts: the fault hook installed (tests/hooked/sitecustomize.py), the
# faults read from one file per session, one hash seed, the same offline settings as the tests.
HOOKED = {"PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "tests", "hooked"), ROOT]),
          "PYTHONHASHSEED": "0",  # set orders (peft's target modules in adapter_config.json) equal in every run
          **{k: v for k, v in os.environ.items() if k.startswith(("HF_", "TRANSFORMERS_", "LITELLM_", "TRL_",
                                                                      "TOKENIZERS_"))}}


@pytest.fixture(scope="session")
def faults_file(tmp_path_factory):
    """The file the fault hook reads in every hooked process (tests/faults.py); empty: no faults."""
    return tmp_path_factory.mktemp("faults") / "faults.json"


@pytest.fixture
def hooked(monkeypatch, faults_file):
    """Runs started from this process (bench's local executor) get the fault hook; returns a
    function that sets the faults (a list of tests/faults.py entries)."""
    for name, value in {**HOOKED, "ESPL_TEST_FAULTS": str(faults_file)}.items():
        monkeypatch.setenv(name, value)
    faults_file.write_text("[]")

    def set_faults(faults: list[dict]) -> None:
        import json

        faults_file.write_text(json.dumps(faults))

    yield set_faults
    faults_file.write_text("[]")


@pytest.fixture(scope="session")
def ray_cluster(faults_file):
    """A local Ray instance with 2 CPUs for the session; its workers get the hooked environment.
    Ray's driver talks to it over TCP on localhost: tests using it need
    ``@pytest.mark.enable_socket``."""
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {**HOOKED, "ESPL_TEST_FAULTS": str(faults_file)}})
    yield ray
    ray.shutdown()


@pytest.fixture
def emulated_bf16(monkeypatch):
    """A CPU that emulates bfloat16 (as CI's does), so ``--dtype auto`` resolves to float32 on any
    host: tests that compare weights exactly, or identities by dtype, must not depend on the CPU."""
    from espl_bench.agents import devices

    monkeypatch.setattr(devices, "native_bf16_cpu", lambda: False)
