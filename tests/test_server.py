"""A real ``ledger serve`` in a subprocess, for the tests that talk to one over HTTP.

The code lives in ``ledger.crash`` (the crash-safety harness drives the same process); these
names stay here for the tests that import them (``Server`` starts ``python -m ledger.cli serve``
with its key and first central-bank key in a temporary directory and waits for /healthz;
``kill()`` is SIGKILL, ``stop()`` SIGTERM). The SIGKILL-and-restart test is
``tests/test_crash.py``."""

from __future__ import annotations

from ledger.crash import ServeProcess, free_port, serving

Server = ServeProcess

__all__ = ["Server", "free_port", "serving"]
