"""``python -m espl_bench`` is the ``espl-bench`` command."""

import sys

from espl_bench.running.cli import main

sys.exit(main())
