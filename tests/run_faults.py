"""``python run_faults.py [FAULT] -- run CONFIG ...``: ``tikmix run`` that SIGKILLs itself at a chosen point.

Used by test_run_kill_resume.py to interrupt a run the hard way (no cleanup, no ``finally``) at a precise
place: right after an optimizer step, in the middle of an influence measurement, or half-way through
writing a checkpoint file.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--kill-after-step", type=int, default=None)
    p.add_argument("--kill-in-influence-call", type=int, default=None, help="1-based, counted in this process")
    p.add_argument("--kill-in-checkpoint-write", type=int, default=None, help="the checkpoint of this step")
    args, rest = p.parse_known_args()

    import torch

    from tikmix.cli import main as cli
    from tikmix.controller import Controller
    from tikmix.influence import GroupInfluence
    from tikmix.run.checkpoint import FORMAT

    if args.kill_after_step is not None:
        step_fn = Controller.step

        def step(self, step: int):
            out = step_fn(self, step)
            if step == args.kill_after_step:
                _die()
            return out

        Controller.step = step
    if args.kill_in_influence_call is not None:
        compute = GroupInfluence.compute
        calls = [0]

        def compute_then_die(self, *a, **k):
            calls[0] += 1
            if calls[0] == args.kill_in_influence_call:
                _die()
            return compute(self, *a, **k)

        GroupInfluence.compute = compute_then_die
    if args.kill_in_checkpoint_write is not None:
        save = torch.save

        def half_save(obj, f, *a, **k):
            if isinstance(obj, dict) and obj.get("format") == FORMAT and obj.get("step") == args.kill_in_checkpoint_write:
                buf = io.BytesIO()
                save(obj, buf, *a, **k)
                f.write(buf.getvalue()[: buf.tell() // 2])
                f.flush()
                os.fsync(f.fileno())
                _die()
            return save(obj, f, *a, **k)

        torch.save = half_save
    return cli(rest)


if __name__ == "__main__":
    sys.exit(main())
