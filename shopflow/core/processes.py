"""Child processes that must not outlive their purpose: a stage run by DVC, a `bentoml serve`.

Both spawn trees of their own (DVC runs the stage's command; BentoML's arbiter, which renames
itself `circusd`, starts workers in process groups of their own and restarts them when they
die), so they are stopped as a tree, children first found through psutil, with a grace
period before SIGKILL. A pid recorded in a file is only acted on while it is still the same
process (same start time): pids are reused.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

import psutil

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """`preexec_fn`: the child gets SIGTERM when the process that started it dies (Linux), so
    a worker killed with SIGKILL does not leave a stage running that holds DVC's lock."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def started_at(pid: int) -> float | None:
    """The start time of process `pid` (its identity with the pid); None when it is gone."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except psutil.NoSuchProcess:
        return None


def is_running(pid: int, started: float | None = None) -> bool:
    """Is `pid` alive (and, when `started` is given, still the process that started then)?"""
    now = started_at(pid)
    return now is not None and (started is None or abs(now - started) < 0.01)


def group_members(pgid: int) -> list[psutil.Process]:
    """The live processes of process group `pgid` (orphans included, whoever their parent)."""
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
    return members


def stop_process_group(pgid: int, grace_s: float = 30.0) -> int:
    """SIGTERM every process of group `pgid`, SIGKILL what is left after `grace_s`; how many
    there were. A killed `dvc repro` leaves its stage running as an orphan in the group it
    was started in (its own, `start_new_session`): this is what stops it."""
    members = group_members(pgid)
    terminate(members, grace_s)
    return len(members)


def stop_process_tree(pid: int, grace_s: float = 30.0) -> bool:
    """SIGTERM `pid` and all its descendants, SIGKILL what is left after `grace_s`. False when
    `pid` was already gone."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    terminate(tree, grace_s)
    return True


def terminate(processes: list[psutil.Process], grace_s: float) -> None:
    """SIGTERM each of `processes`, then SIGKILL those still alive after `grace_s`."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=5)
