"""Several learner processes under ``accelerate launch``: rank 0 runs the run, the others only train.

Every process launched by ``accelerate launch`` (or ``torchrun``) runs ``espl-bench run`` with the
same flags. Rank 0, the *leader*, does everything a one-process run does: rollouts, reflection,
evaluation, commits, the run folder. The other ranks, *followers*, hold their replica or shard of
the policy (DDP, FSDP or DeepSpeed, as the accelerate config says) and take part in every TRL
step. Each TRL step's batch is built once, by the leader, and reaches the followers inside TRL's
``rollout_func``; each rank trains on its slice (rank-major, so TRL's gather of rewards across
ranks sees the batch in the leader's order and GRPO groups stay intact).

Protocol (every message is JSON in a ``uint8`` tensor broadcast from rank 0; never pickle):

1. *handshake*: the learner's settings, or ``null`` when the run trains no weights (the
   followers then exit) or stopped before building its learner;
2. one message per TRL step: that step's whole batch; ``null`` stops the trainers.

Error policy: a leader that fails still sends ``null`` on its way out (:func:`leading`), so
followers exit instead of hanging; the launcher reports the leader's exit status. A follower that
loses the leader mid-collective fails with the backend's error and the launcher stops the rest.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import NoReturn

log = logging.getLogger(__name__)

# Followers wait in a collective while the leader samples, reflects and evaluates; the default
# 30-minute collective timeout would kill a long iteration on a big model.
COLLECTIVE_TIMEOUT = timedelta(hours=12)

_handshake_sent = False


def world_size() -> int:
    """How many processes the launcher started (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def sharded_parameters() -> bool:
    """Whether the launch config shards the parameters (FSDP, DeepSpeed ZeRO-3).

    Then no single rank holds the whole policy, so the in-process ``transformers`` sampler cannot
    generate on the leader alone; rollouts must come from a vLLM server. Accelerate shards only on
    GPUs: without one the same configs run as plain data parallel.
    """
    import torch

    if not torch.cuda.is_available():
        return False
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return True
    return (os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
            and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3")


def split_error(programs: int, batch: int, group: int, processes: int, max_batch: int) -> str | None:
    """Why a step's rows (programs x batch x group) cannot be shared by ``processes``, with the fix
    (None when they can): the nearest ``--batch-size`` values (at most ``max_batch``, the train
    split) that divide, else the most processes that do.

    The paper's default step (3 x 10 x 5 = 150 rows) splits over 1, 2, 3, 5 and 6 processes, not 4
    or 8; ``--batch-size 8`` (120 rows) splits over 1, 2, 4 and 8."""
    rows = programs * batch * group
    if rows % processes == 0:
        return None
    fits = [b for b in range(1, max_batch + 1) if programs * b * group % processes == 0]
    below, above = max((b for b in fits if b < batch), default=None), min((b for b in fits if b > batch), default=None)
    near = [b for b in (below, above) if b is not None]
    most = max(d for d in range(1, processes) if rows % d == 0)
    sizes = " or ".join(f"--batch-size {b} ({programs * b * group} rows)" for b in near)
    return (f"a step has {rows} rows ({programs} programs x {batch} problems x {group} samples), which {processes} "
            f"processes cannot share evenly; fix: {sizes + ', or ' if sizes else ''}launch {most} processes "
            f"(a divisor of {rows})")


# accelerate's mixed_precision for each policy dtype.
MIXED_PRECISION = {"bfloat16": "bf16", "float16": "fp16", "float32": "no"}


def align_mixed_precision(dtype: str) -> None:
    """Make the mixed precision the trainer reads (``ACCELERATE_MIXED_PRECISION``, which ``accelerate
    launch`` sets from its config) follow the policy's ``dtype``: ``--dtype`` decides, so a float32
    run on a CPU without native bfloat16 stays float32 under the repository's bf16 configs."""
    wanted = MIXED_PRECISION[dtype]
    given = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if given not in (None, wanted):
        log.info("the accelerate config's mixed_precision %s gives way to the policy's dtype %s (%s)", given, dtype, wanted)
    os.environ["ACCELERATE_MIXED_PRECISION"] = wanted


def init() -> None:
    """Join the process group (gloo on CPU, NCCL on GPUs) before any other collective."""
    import torch
    from accelerate import PartialState

    # TRL's Trainer creates the same shared state later; it must agree on cpu= or it would
    # pick a GPU backend on one machine and gloo on another.
    PartialState(cpu=not torch.cuda.is_available(), timeout=COLLECTIVE_TIMEOUT)


def broadcast_json(value=None):
    """Rank 0's ``value`` on every rank (JSON-serialisable values only)."""
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    device = PartialState().device
    if rank() == 0:
        data = json.dumps(value).encode()
        size = torch.tensor([len(data)], dtype=torch.long, device=device)
    else:
        size = torch.zeros(1, dtype=torch.long, device=device)
    dist.broadcast(size, src=0)
    if rank() == 0:
        buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    else:
        buffer = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(buffer, src=0)
    return json.loads(buffer.cpu().numpy().tobytes().decode())


def announce(settings) -> None:
    """Leader: send the learner's settings so the followers build the same trainer (handshake)."""
    global _handshake_sent
    if world_size() > 1 and rank() == 0 and not _handshake_sent:
        broadcast_json(settings.payload())
        _handshake_sent = True


@contextmanager
def leading() -> Iterator[None]:
    """Leader: around a whole run; releases followers that never got a handshake."""
    global _handshake_sent
    try:
        yield
    finally:
        if not _handshake_sent:
            broadcast_json(None)
            _handshake_sent = True


def shutdown() -> None:
    """Leave the process group: a rank that exits with it still open can abort in its gloo threads
    ("terminate called without an active exception") after its work is done."""
    import gc

    import torch.distributed as dist

    gc.collect()  # a trainer left in a reference cycle still holds the group (DDP's reducer)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def leave(code: int) -> NoReturn:
    """Follower: end the process once its work is done, without the interpreter's teardown.

    A follower holds nothing that needs finalising (TRL wrote its checkpoints as it went), but
    the teardown of torch's C++ state at interpreter exit could still abort a follower after a
    clean run (SIGABRT, "terminate called without an active exception"; seen once in CI), and
    the launcher then fails the whole run. ``os._exit`` skips that teardown.
    """
    import sys

    try:
        shutdown()
    finally:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing left to flush into
                pass
        os._exit(code)
