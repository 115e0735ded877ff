"""Compiles the engine with mypyc (C speed for the ledger's hot path), or falls back to pure
Python when that is not possible. Everything else is in pyproject.toml."""

from __future__ import annotations

import os
import sys

from setuptools import setup

COMPILED = [
    "ledger/daily.py",
    "ledger/domain.py",
    "ledger/engine.py",
    "ledger/idfilter.py",
    "ledger/journal.py",
    "ledger/merkle.py",
]


def ext_modules() -> list:
    if os.environ.get("LEDGER_COMPILE", "1") == "0":
        return []
    try:
        from mypyc.build import mypycify

        return mypycify(COMPILED, opt_level="3")
    except Exception as exc:  # no compiler, no mypyc: the same code runs as Python
        print(f"warning: not compiling the engine ({exc}); using pure Python", file=sys.stderr)
        return []


setup(ext_modules=ext_modules())
