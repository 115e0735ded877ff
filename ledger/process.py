"""What every long-running process of ``ledger serve`` does to itself (the writer, its HTTP
workers, the committer): memory and garbage-collector settings, and dying with its parent; and
how one process sees another from outside (alive or gone, its descendants), from /proc."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import signal
import time
from pathlib import Path
from typing import Final

MALLOC_ARENAS: Final = 2
GC_YOUNG_THRESHOLD: Final = int(os.environ.get("LEDGER_GC_THRESHOLD", "50000"))
"""Allocations between collections of the youngest generation (CPython's default: 700)."""
PR_SET_PDEATHSIG: Final = 1


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def few_malloc_arenas() -> None:
    """Cap glibc's malloc arenas before any thread starts (as MALLOC_ARENA_MAX would). With an
    arena per busy thread (the request thread pool, signature checks, the writer) memory freed
    in one arena is not reused by another, and the server's resident size crept up under steady
    load (measured: 7.7 MiB/min with the default, 3.6 with two). Not glibc: nothing to do."""
    if "MALLOC_ARENA_MAX" in os.environ:  # the operator chose
        return
    with contextlib.suppress(OSError, AttributeError):
        _libc().mallopt(-8, MALLOC_ARENAS)  # M_ARENA_MAX


def settle_heap() -> None:
    """Once a process has started: what exists now (modules, the app, the writer's state) lives
    as long as the process, so the collector stops looking at it (``gc.freeze``), and young
    objects are collected less often. Without this, each full collection walked every object
    of the process: pauses of 100-160 ms several times in ten seconds of load (measured in an
    HTTP worker), which were the API's p99, and a fifth of the committer's time."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def die_with_parent() -> None:
    """SIGKILL this process when its parent exits (Linux), even by SIGKILL: an HTTP worker must
    never answer for a ledger whose writer is gone."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


# -- processes seen from outside (Linux /proc) ----------------------------------------------------


def proc_stat(pid: int, task: int | None = None) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or of one of its threads, from /proc; None when it
    is gone."""
    path = f"/proc/{pid}/stat" if task is None else f"/proc/{pid}/task/{task}/stat"
    try:
        raw = Path(path).read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[1])


def descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and those they started, and so on: a server's HTTP
    workers, its committer launcher and committers (Linux /proc; elsewhere none are found)."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                stat = proc_stat(int(entry.name))
                if stat is not None:
                    children.setdefault(stat[1], []).append(int(entry.name))
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children.get(child, [])
    return found


def alive(pid: int) -> bool:
    """Whether any thread of ``pid`` still runs. A process whose main thread has exited is a
    zombie while its other threads finish, and its files (a listening socket, a lock) close
    only with the last of them."""
    if Path("/proc").is_dir():
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return False
        states = (proc_stat(pid, int(t)) for t in tasks)
        return any(stat is not None and stat[0] not in ("Z", "X") for stat in states)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_gone(pids: list[int], timeout_s: float) -> bool:
    """Whether every one of ``pids`` was gone (see ``alive``) within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while any(alive(p) for p in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True
