"""The e-CNY reference ledger: a signed, append-only, double-entry ledger.

The writer's hot modules (``ledger.engine``, ``ledger.domain``... the list is in setup.py) are
compiled with mypyc when the package is installed. The compiled modules shadow their sources,
so a source edited after the build would silently not run: importing refuses instead, saying
how to rebuild."""

from __future__ import annotations

from pathlib import Path


def _refuse_stale_builds() -> None:
    here = Path(__file__).parent
    for built in here.glob("*.cpython-*.so"):
        name = built.name.split(".", 1)[0]
        source = here / f"{name}.py"
        if source.exists() and source.stat().st_mtime > built.stat().st_mtime:
            raise ImportError(
                f"ledger/{name}.py changed after it was compiled into {built.name}; "
                "rebuild with `pip install -e .` (or `LEDGER_COMPILE=0 pip install -e .` to "
                "run the engine as plain Python)"
            )


_refuse_stale_builds()
