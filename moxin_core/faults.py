"""Fault injection: named points in long work where a test can make the process fail for real.

The fault tests of ``moxin train`` need a run to die at moments a timer cannot hit reliably (in
the middle of a checkpoint write, between two micro-batches of one optimizer step, inside the
DPO reference pre-computation). Code marks such moments with :func:`fault_point`; the
``MOXIN_FAULTS`` environment variable arms them::

    MOXIN_FAULTS="checkpoint-write@3"            # SIGKILL at the 3rd checkpoint write
    MOXIN_FAULTS="micro-batch@7:kill"            # SIGKILL inside the 7th micro-batch
    MOXIN_FAULTS="checkpoint-write@2:enospc"     # the 2nd checkpoint write finds the disk full
    MOXIN_FAULTS="loss@5:nan"                    # the 5th micro-batch's loss becomes NaN

``NAME@N[:ACTION]``, comma-separated; ``N`` counts the point's hits in this process (from 1).
Actions: ``kill`` (default; SIGKILL, as an out-of-memory killer or a lost node would),
``enospc`` (raise ``OSError(ENOSPC)``), ``nan`` (the call returns ``"nan"``; the caller
poisons its value). Without ``MOXIN_FAULTS`` a fault point costs one dictionary lookup.

Points in the core: ``micro-batch`` (inside a training micro-batch, after the forward pass and
before the backward pass), ``loss`` (a micro-batch's loss), ``gradient`` (an optimizer step's
gradients, ``nan`` makes one of them infinite), ``checkpoint-write`` (a checkpoint
folder's files written, not yet renamed into place), ``export`` (the stage's model written, not
yet renamed). Plugins add their own (``dpo-reference``, ``grpo-generate``).
"""

from __future__ import annotations

import errno
import os
import signal
import sys

ENV = "MOXIN_FAULTS"
ACTIONS = ("kill", "enospc", "nan")

_hits: dict[str, int] = {}


def _armed() -> dict[str, tuple[int, str]]:
    spec = os.environ.get(ENV, "").strip()
    armed = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, rest = item.partition("@")
        count, _, action = rest.partition(":")
        action = action or "kill"
        if not name or not count.isdigit() or int(count) < 1 or action not in ACTIONS:
            raise ValueError(f"{ENV}={spec!r}: {item!r} is not NAME@N[:{'|'.join(ACTIONS)}]")
        armed[name] = (int(count), action)
    return armed


def fault_point(name: str) -> str | None:
    """Mark a moment where a run may fail; acts when ``MOXIN_FAULTS`` arms ``name`` for this
    hit. Returns ``"nan"`` when the caller should poison its value, else None."""
    if ENV not in os.environ:
        return None
    armed = _armed().get(name)
    _hits[name] = _hits.get(name, 0) + 1
    if armed is None or armed[0] != _hits[name]:
        return None
    action = armed[1]
    if action == "kill":
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + f" (injected at {name})")
    return action
