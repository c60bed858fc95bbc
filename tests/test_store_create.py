"""Several processes opening one scan database that does not exist yet (``nwot-fast scan --db``
started twice at once, as the README's recipe does): every one of them opens it, none fails or
waits past its timeout, and none removes or replaces a database another one is using.

The interleavings that broke it are forced here, without timing: a connection of this process
stands for the other process (SQLite locks connections of one process against each other as it
locks processes). The last test runs real processes many times; run this file as a script for a
longer stress run: ``python tests/test_store_create.py ROUNDS PROCESSES``.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from nwot_fast import store
from nwot_fast.store import APPLICATION_ID, ScanDatabaseError, ScoreDB

ROW = dict(arch_index=7, arch="|none~0|+|none~0|none~1|+|none~0|none~1|none~2|", method="jacob_cov", score=1.5,
           score_text="1.5", representative=7, dataset=None, data=None, batch_size=4, seed=0, config_hash="c" * 16,
           config="{}", seconds=0.1, engine="reference", device="cpu", version="test", created_at="now")


def _is_scan_database(path) -> bool:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("PRAGMA application_id").fetchone()[0]) == APPLICATION_ID
    finally:
        conn.close()


def test_opening_waits_while_another_connection_writes_a_new_empty_database(tmp_path, monkeypatch):
    """The file is there, empty, and another connection holds its write lock (another scan making
    it a scan database). SQLite refuses the switch to WAL at once, without waiting in its busy
    handler (waiting there could deadlock two connections upgrading a read lock): the opener
    pauses and tries again within its timeout, and opens the database once the other is done."""
    path = tmp_path / "new.sqlite"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    pauses = []

    def pause(seconds):  # the other connection finishes while this one waits
        if not pauses:
            other.execute("COMMIT")
        pauses.append(seconds)

    monkeypatch.setattr(time, "sleep", pause)
    with ScoreDB(path, timeout=60) as db:
        db.write([ROW])
    other.close()
    assert len(pauses) >= 1
    assert _is_scan_database(path)
    with ScoreDB(path, readonly=True) as db:
        assert list(db.load("c" * 16)) == [7]


def test_a_failed_open_never_removes_a_database_another_connection_uses(tmp_path, monkeypatch):
    """This process fails to open a new database (here: its write lock is held and the timeout
    is 0) while another process has opened the same file and is writing into it. The file and
    the other's work stay: the loser must not remove a file because it is new and still empty
    (the other's commit would fail with a disk I/O error, or land in a removed file)."""
    path = str(tmp_path / "new.sqlite")
    others = []
    first_read = store.check_owner

    def check_owner(conn, p, **kw):  # the first read of the file: the other process opens it now
        if not others:
            other = sqlite3.connect(p, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            other.execute("CREATE TABLE notes (text TEXT)")
            other.execute("INSERT INTO notes VALUES ('kept')")
            others.append(other)
        return first_read(conn, p, **kw)

    monkeypatch.setattr(store, "check_owner", check_owner)
    with pytest.raises(ScanDatabaseError, match="locked"):
        ScoreDB(path, timeout=0)
    others[0].execute("COMMIT")
    others[0].close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT text FROM notes").fetchall() == [("kept",)]
    finally:
        conn.close()
    assert sorted(os.listdir(tmp_path)) == ["new.sqlite"]  # no private file of the failed opener left


def test_a_process_that_loses_the_creation_race_opens_the_winners_database(tmp_path, monkeypatch):
    """Both see no file and build a new database; the other publishes its database first and
    writes a row. This one's is not put in its place: it opens the other's, the row kept."""
    path = str(tmp_path / "new.sqlite")
    publish = os.link
    winners = []

    def link(src, dst, **kw):  # just before this process publishes, the other one does
        if not winners:
            winners.append(None)
            winners[0] = ScoreDB(path, timeout=60)  # publishes through this link(), the hook spent
            winners[0].write([ROW])
        return publish(src, dst, **kw)

    monkeypatch.setattr(os, "link", link)
    with ScoreDB(path, timeout=60) as db:
        assert list(db.load("c" * 16)) == [7]
    winners[0].close()
    assert sorted(os.listdir(tmp_path)) == ["new.sqlite"]


def test_a_file_system_without_hard_links_gets_the_database_by_rename(tmp_path, monkeypatch):
    def no_links(src, dst, **kw):
        raise PermissionError(errno.EPERM, "Operation not permitted", src)

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "new.sqlite"
    with ScoreDB(path) as db:
        db.write([ROW])
    assert sorted(os.listdir(tmp_path)) == ["new.sqlite"]
    assert _is_scan_database(path)


def _open_and_write(path: str, k: int, start, failures) -> None:
    """One racing process: wait for the others, open the database, write row ``k``."""
    start.wait()
    try:
        with ScoreDB(path, timeout=60) as db:
            db.write([dict(ROW, arch_index=k, representative=k)])
    except Exception as e:  # reported to the parent, which fails
        failures.put(f"process {k}: {type(e).__name__}: {e}")
    else:
        failures.put(None)


def _race(directory: str, rounds: int, processes: int) -> list:
    """``rounds`` times, ``processes`` processes open one new database at the same moment and
    write a row each; the failures, as text (empty when every open and write succeeded). The
    processes are forked from this one, module imported, and released together by a barrier:
    fresh interpreters take longer to start than the window the race needs."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    found = []
    for r in range(rounds):
        path = os.path.join(directory, f"race{r}.sqlite")
        start, results = context.Barrier(processes), context.Queue()
        procs = [context.Process(target=_open_and_write, args=(path, k, start, results)) for k in range(processes)]
        for p in procs:
            p.start()
        failures = [f for f in (results.get(timeout=300) for _ in procs) if f is not None]
        for p in procs:
            p.join()
        found += [f"round {r}: {f}" for f in failures]
        if not failures:
            with ScoreDB(path, readonly=True) as db:
                rows = sorted(db.load("c" * 16))
            if rows != list(range(processes)):
                found.append(f"round {r}: rows {rows}")
        # A -wal and -shm stay when the last two connections close at the same instant (each
        # sees the other's lock and leaves the checkpoint to it): SQLite's way, for any database,
        # harmless (the next open reads them), and not what this race is about.
        leftovers = sorted(set(os.listdir(directory)) - {f"race{r}.sqlite{s}" for s in ("", "-wal", "-shm")})
        if leftovers:
            found.append(f"round {r}: left beside it: {leftovers}")
        for name in os.listdir(directory):  # the next round starts in an empty directory
            os.unlink(os.path.join(directory, name))
    return found


@pytest.mark.slow  # subprocesses
@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks the racing processes")
def test_processes_creating_one_database_at_once_all_open_it(tmp_path):
    """Real processes, released together, 30 times: not a proof (the interleavings above are),
    a check that nothing else goes wrong between processes. Run in a fresh interpreter: this
    one has torch's threads, which a fork does not take along."""
    from conftest import subprocess_env

    proc = subprocess.run([sys.executable, __file__, "30", "3"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=subprocess_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr


if __name__ == "__main__":
    import tempfile

    rounds, processes = (int(a) for a in (sys.argv[1:] + ["200", "3"])[:2])
    with tempfile.TemporaryDirectory(prefix="nwot-race-") as work:
        found = _race(work, rounds, processes)
    print("\n".join(found) or f"{rounds} rounds x {processes} processes: every process opened the database")
    sys.exit(1 if found else 0)
