"""Installs the fault hook (tests/faults.py) in every Python process that has this folder and the
repository root on ``PYTHONPATH``: the runs ``espl-bench bench`` starts in tests."""

from tests.faults import install

install()
