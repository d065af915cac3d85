"""``python -m tests.run_cli ARGS``: the espl-bench command with the test hooks (tests/faults.py) installed."""

import sys

from tests.faults import install

install()

from espl_bench.running.cli import main  # noqa: E402  (after the hook, so every point is seen)

sys.exit(main())
