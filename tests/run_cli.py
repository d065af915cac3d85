"""``python -m tests.run_cli ARGS``: the espl-bench command with the test hooks (tests/faults.py) installed,
and TRL's vLLM faked (tests/fakes.py: HFEngine) where ``ESPL_TEST_FAKE_TRL_VLLM`` names a folder."""

import os
import sys
from pathlib import Path

from tests.faults import install

install()
if os.environ.get("ESPL_TEST_FAKE_TRL_VLLM"):
    from tests.fakes import install_fake_trl_vllm

    install_fake_trl_vllm(Path(os.environ["ESPL_TEST_FAKE_TRL_VLLM"]))

from espl_bench.running.cli import main  # noqa: E402  (after the hook, so every point is seen)

sys.exit(main())
