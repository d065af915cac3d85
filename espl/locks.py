"""One owner per folder: an OS lock held while a process works in it, and a note naming the holder.

:func:`owned` takes ``FOLDER/.lock`` without waiting (``flock`` through the ``filelock`` library)
and writes ``FOLDER/.owner`` (host, pid, since); a second process gets :class:`FolderBusy` with
one line naming that holder and the fix. :func:`waited` takes the same kind of lock but waits for
it (a cache another process is filling: wait, then reuse its work).

The OS drops a lock when its process dies, kill -9 included, so the next owner starts at once; a
stale ``.owner`` is simply overwritten. ``filelock`` falls back to a marker file on filesystems
without ``flock``; such a lock outlives a killed process until it is deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from espl_bench.errors import FolderBusy

LOCK, OWNER = ".lock", ".owner"


@contextlib.contextmanager
def owned(folder: str | Path, what: str, fix: str) -> Iterator[None]:
    """Hold ``folder`` for the block or raise :class:`FolderBusy`: "``what`` is in use by pid P on
    host H since T; fix: ``fix``"."""
    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise FolderBusy(f"{what} is in use by {holder(folder)}; fix: {fix}") from None
    try:
        _write_owner(folder)
        yield
    finally:
        with contextlib.suppress(OSError):  # still ours: nobody else can hold the lock yet
            (folder / OWNER).unlink()
        lock.release()


@contextlib.contextmanager
def waited(lock_file: str | Path, what: str, timeout: float) -> Iterator[None]:
    """Hold ``lock_file`` for the block, waiting up to ``timeout`` seconds for another holder."""
    from filelock import FileLock, Timeout

    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(lock_file, timeout=timeout):
            yield
    except Timeout:
        raise FolderBusy(f"{what} stayed locked for {timeout:.0f} s ({lock_file}); fix: let the other process "
                         "finish, or stop it and try again") from None


def holder(folder: Path) -> str:
    """The holder as its ``.owner`` note names it (written right after the lock is taken)."""
    try:
        note = json.loads((folder / OWNER).read_text(encoding="utf-8"))
        return f"pid {note['pid']} on host {note['host']} since {note['since']}"
    except (OSError, ValueError, KeyError, TypeError):  # the holder is between taking the lock and writing it
        return "another process (its owner note is not written yet)"


def _write_owner(folder: Path) -> None:
    since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())
    tmp = folder / f"{OWNER}.{os.getpid()}"
    tmp.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": since}) + "\n",
                   encoding="utf-8")
    os.replace(tmp, folder / OWNER)
