"""The committer process and the launcher that forks it: what its writer relies on when it
starts, stops, dies or is interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ledger.process import alive, wait_gone
from ledger.store.committer import LAUNCHER, CommitFailed, Committer
from ledger.store.database import make_engine
from ledger.store.writer import LedgerLockedError, WriterLock
from tests.test_service import ALICE, BOB, open_ledger, pay, seed


def test_closing_returns_once_the_writer_lock_is_free(database_url: str) -> None:
    committer = Committer(database_url)
    committer_pid = committer.pid
    assert committer_pid is not None and committer.alive()
    with pytest.raises(LedgerLockedError, match="another ledger writer"):
        Committer(database_url)
    committer.close()
    assert not committer.alive()
    engine = make_engine(database_url)
    try:
        lock = WriterLock.acquire(database_url, engine, wait_s=0)  # at once: no waiting allowed
        lock.release()
    finally:
        engine.dispose()
    assert wait_gone([committer_pid], 30), "the committer did not exit"


def test_a_committer_that_does_not_stop_is_killed(tmp_path: Path) -> None:
    """A committer that does not answer the request to stop (here: stopped by SIGSTOP) is
    SIGKILLed after the timeout, and ``close`` returns once it is gone and its lock free."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    committer = Committer(url)
    pid = committer.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    committer.close(timeout_s=0.5)
    assert time.monotonic() - started >= 0.5
    assert not alive(pid)
    Committer(url).close()  # the lock is free at once


def test_a_committer_works_in_the_callers_directory_environment_and_output_of_the_moment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Not in the launcher's, which started earlier: a relative SQLite path and the settings
    read from the environment mean what they would for a process started now, and what it
    logs goes where the caller's output goes now."""
    Committer(f"sqlite:///{tmp_path / 'first.db'}").close()  # the launcher is running
    here = tmp_path / "later"
    here.mkdir()
    monkeypatch.chdir(here)
    committer = Committer("sqlite:///relative.db")
    committer.close()
    assert (here / "relative.db").exists()
    monkeypatch.setenv("LEDGER_SQLITE_SYNCHRONOUS", "SOMETIMES")
    capfd.readouterr()
    with pytest.raises(CommitFailed):
        Committer(f"sqlite:///{tmp_path / 'second.db'}")
    assert "LEDGER_SQLITE_SYNCHRONOUS must be FULL, NORMAL or EXTRA" in capfd.readouterr().err


def test_committers_outlive_their_launcher_and_a_new_launcher_starts(
    database_url: str, key_file: Path, tmp_path: Path
) -> None:
    with open_ledger(database_url, key_file) as ledger:
        seed(ledger)
        launcher_pid = LAUNCHER.pid
        assert launcher_pid is not None
        os.kill(launcher_pid, signal.SIGKILL)
        assert wait_gone([launcher_pid], 30), "the launcher did not die"
        assert ledger.create_transfers([pay(501, ALICE, BOB, 10)]).codes == [0]
        other = Committer(f"sqlite:///{tmp_path / 'other.db'}")  # forked by a new launcher
        try:
            assert other.alive() and LAUNCHER.pid not in (None, launcher_pid)
        finally:
            other.close()
        assert ledger.committer.alive()


def test_the_committer_ignores_ctrl_c(database_url: str, key_file: Path) -> None:
    """A Ctrl-C reaches the whole process group; the writer, not the signal, stops the
    committer, after the requests in hand."""
    with open_ledger(database_url, key_file) as ledger:
        seed(ledger)
        pid = ledger.committer.pid
        assert pid is not None
        os.kill(pid, signal.SIGINT)
        time.sleep(0.2)
        assert ledger.committer.alive() and ledger.committer.pid == pid
        assert ledger.create_transfers([pay(501, ALICE, BOB, 10)]).codes == [0]


def test_a_killed_parent_leaves_no_launcher_or_committer_behind(tmp_path: Path) -> None:
    """SIGKILL a process that has a ledger open: its launcher and committer exit on their own
    (the ends of their pipes), and the writer lock is free for the next server."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    script = textwrap.dedent(
        f"""
        import sys, time
        from ledger.service import LedgerService
        from ledger.store.committer import LAUNCHER
        ledger = LedgerService.open({url!r}, __import__("pathlib").Path({str(tmp_path)!r}) / "k")
        print(LAUNCHER.pid, ledger.committer.pid, flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        launcher_pid, committer_pid = map(int, proc.stdout.readline().split())
        assert alive(launcher_pid) and alive(committer_pid)
    finally:
        proc.kill()
        proc.wait(10)
    assert wait_gone([launcher_pid], 30), "the launcher outlived its parent"
    assert wait_gone([committer_pid], 30), "the committer outlived its writer"
    replacement = Committer(url)  # takes the lock at once
    replacement.close()
