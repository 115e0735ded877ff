"""A soak run: a fresh ``ledger serve`` under the pilot profile's steady traffic for minutes,
with the server's resident memory (the writer, its committer and its HTTP workers, from
``/proc``) sampled every few seconds. It reports the memory after warm-up, at the end and at
its peak, and whether it stayed flat (the end within 20 % of the warm-up figure), then the
profile's own SLO and audit verdicts.

    python -m loadtests.soak --minutes 10 --base-users 40 --out reports/soak

Linux only (it reads ``/proc``). Exits 1 when memory grew by more than 20 % or the profile
failed its gate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from ledger.crash import ServeProcess
from ledger.process import descendants

FLAT_WITHIN: Final = 0.20
SAMPLE_S: Final = 5.0
WARM_UP_S: Final = 60.0


def own_rss(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0
    return sum(int(x.split()[1]) * 1024 for x in status.splitlines() if x.startswith("VmRSS:"))


def rss_bytes(pid: int) -> dict[str, int]:
    """Resident memory in bytes of the writer (``pid``), its committer (with the launcher it
    was forked from) and its HTTP workers."""
    out = {"writer": own_rss(pid), "committer": 0, "workers": 0}
    for child in descendants(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        role = "workers" if b"ledger.worker" in command else "committer"
        out[role] += own_rss(child)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--base-users", type=int, default=40)
    parser.add_argument("--database", default="", help="Default: SQLite in --out.")
    parser.add_argument("--out", type=Path, default=None, help="Default: a temporary folder.")
    args = parser.parse_args(argv)
    out: Path = args.out or Path(tempfile.mkdtemp(prefix="ledger-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    database = args.database or f"sqlite:///{out / 'ledger.db'}"
    server = ServeProcess(database, out)
    server.start()
    assert server.proc is not None
    seconds = args.minutes * 60
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(Path(__file__).with_name("pilot.py")),
        "--host",
        server.base,
        "--headless",
        "--shape",
        "steady",
        "--base-users",
        str(args.base_users),
        "--shape-seconds",
        str(seconds),
        "--cb-key",
        server.admin_file.read_text().strip(),
        "--ledger-database",
        database,
        "--report-dir",
        str(out / "locust"),
    ]
    samples: list[tuple[float, int]] = []
    parts: list[dict[str, int]] = []
    started = time.monotonic()
    try:
        with open(out / "locust.log", "w") as log:
            load = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=out)
            while load.poll() is None:
                rss = rss_bytes(server.proc.pid)
                samples.append((time.monotonic() - started, sum(rss.values())))
                parts.append(rss)
                time.sleep(SAMPLE_S)
    finally:
        server.stop()
    warm = [rss for t, rss in samples if t >= WARM_UP_S] or [rss for _, rss in samples]
    first, last, peak = warm[0], warm[-1], max(rss for _, rss in samples)
    growth = (last - first) / first
    summary_file = out / "locust" / "summary.json"
    profile: dict[str, Any] = (
        json.loads(summary_file.read_text()) if summary_file.exists() else {"ok": False}
    )
    result = {
        "minutes": args.minutes,
        "base_users": args.base_users,
        "database": database.split(":")[0],
        "rss_after_warm_up_mib": round(first / 2**20, 1),
        "rss_end_mib": round(last / 2**20, 1),
        "rss_peak_mib": round(peak / 2**20, 1),
        "rss_end_by_process_mib": {k: round(v / 2**20, 1) for k, v in parts[-1].items()},
        "rss_after_warm_up_by_process_mib": {
            k: round(v / 2**20, 1) for k, v in parts[len(samples) - len(warm)].items()
        },
        "growth": round(growth, 4),
        "flat": abs(growth) <= FLAT_WITHIN,
        "samples": len(samples),
        "profile_ok": profile.get("ok"),
        "requests_per_s": profile.get("requests_per_s"),
        "p99_ms": profile.get("p99_ms"),
        "failure_ratio": profile.get("failure_ratio"),
        "acknowledged": profile.get("audit", {}).get("acknowledged"),
    }
    (out / "soak.json").write_text(
        json.dumps({**result, "rss": samples, "by_process": parts}, indent=1) + "\n"
    )
    print(json.dumps(result))
    return 0 if result["flat"] and result["profile_ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
