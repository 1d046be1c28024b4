"""A run folder's bookkeeping: the lock that keeps one ``moxin train`` per ``--out``, and the facts
a stage's manifest records about where it ran (code commit, hardware, the variant as run).

The manifest of a stage is written when the stage starts (``status: running``), rewritten with
``status: failed`` or ``interrupted`` and the reason when the run stops early, and completed
(``status: complete``) at the end; ``moxin reproduce`` re-runs a run from these manifests.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from moxin_core.errors import MoxinError

LOCK_FILE = ".moxin.lock"


def now() -> str:
    """UTC time to the microsecond (stages of a fast run start within one second; their order
    must still be told apart)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


class RunLock:
    """An exclusive lock on a run folder (``OUT/.moxin.lock``) held while ``moxin train`` runs.

    ``flock`` is released by the kernel when the holder dies (a SIGKILLed run never leaves a stale
    lock); the file names the holder so the error for a second process can say who it is."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.path = Path(out) / LOCK_FILE
        self._handle: Any = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                holder = json.loads(handle.read() or "{}")
            except json.JSONDecodeError:
                holder = {}
            handle.close()
            who = (f"process {holder.get('pid', '?')} on {holder.get('host', '?')} since "
                   f"{holder.get('started', '?')} ({holder.get('command', '?')})")
            raise MoxinError(f"{self.path.parent} is in use by another moxin run: {who}. Wait "
                             "for it to finish or stop it, or choose another --out; two runs "
                             "writing one folder would corrupt it.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": now(), "command": " ".join(sys.argv)}) + "\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def git_commit(path: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The git commit of the project ``path`` (default: the working directory) is in, and
    whether its working tree has changes; None outside a git work tree."""
    where = str(path or os.getcwd())
    try:
        commit = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", where, "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def hardware() -> dict[str, Any]:
    """The machine a stage ran on (what can change floating-point results)."""
    import torch

    info: dict[str, Any] = {"host": socket.gethostname(), "platform": platform.platform(),
                            "machine": platform.machine(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(),
                            "cuda": torch.version.cuda, "gpus": []}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def peak_memory() -> dict[str, int]:
    """This process's peak memory so far: host resident set (``ru_maxrss``) and, when it used a
    GPU, the most GPU memory its tensors held (``max_memory_allocated``) and the caching
    allocator reserved, in bytes."""
    import resource

    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peaks = {"host_max_rss_bytes": rss if sys.platform == "darwin" else rss * 1024}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peaks["gpu_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        peaks["gpu_max_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
    return peaks
