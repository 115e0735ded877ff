"""What every long-running process of ``ledger serve`` does to itself (the writer, its HTTP
workers, the committer): memory and garbage-collector settings, and dying with its parent."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import signal
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
