"""Helpers for tests with distributed worker processes (mp.spawn or torchrun): a free port, how a worker ends once
its results are written, and a torchrun launch that must succeed."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import NoReturn

import torch.distributed as dist


def end_worker() -> NoReturn:
    """Barrier, destroy the process group, exit with status 0 at once.

    Exiting with ``os._exit`` skips interpreter finalisation. During finalisation a gloo worker thread may still
    be releasing the tensors of the last collective; releasing a tensor that Python saw takes the GIL, which a
    finalising interpreter refuses by ending the thread, and the process aborts ("terminate called without an
    active exception", SIGABRT) after the test's work is done. Call it only once every result is on disk.
    """
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on (for ``init_method="tcp://127.0.0.1:PORT"``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(world: int, *args: str) -> subprocess.CompletedProcess:
    """Run ``torchrun --standalone --nproc_per_node=<world> <args>`` on CPU threads (``OMP_NUM_THREADS=1``), assert
    that it exits with status 0 (showing the ends of its stdout and stderr otherwise) and return the process."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}", *args],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
