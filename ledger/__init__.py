"""The e-CNY reference ledger: a signed, append-only, double-entry ledger.

``ledger.engine`` and ``ledger.domain`` are compiled with mypyc when the package is installed
(see setup.py). The compiled modules shadow their sources, so a source edited after the build
would silently not run: importing refuses instead, saying how to rebuild."""

from __future__ import annotations

from pathlib import Path

_COMPILED = ("daily", "domain", "engine", "journal")


def _refuse_stale_builds() -> None:
    here = Path(__file__).parent
    for name in _COMPILED:
        source = here / f"{name}.py"
        for built in here.glob(f"{name}.cpython-*.so"):
            if source.exists() and source.stat().st_mtime > built.stat().st_mtime:
                raise ImportError(
                    f"ledger/{name}.py changed after it was compiled into {built.name}; "
                    "rebuild with `pip install -e .` (or `LEDGER_COMPILE=0 pip install -e .` to "
                    "run the engine as plain Python)"
                )


_refuse_stale_builds()
