"""The SQLite store of a scan: the ``scores`` table, its schema, and its rows read back checked.
The file under it (its header, integrity, sidecars, sqlite3's errors) is :mod:`nwot_fast.dbfile`.

Rows are keyed by ``(arch_index, config_hash)`` (:meth:`nwot_fast.config.ScoreConfig.config_hash`).
Scores are stored faithfully: ``score`` is a REAL (SQLite cannot hold NaN and stores it as
NULL), and ``score_text`` holds ``repr(score)`` (``'nan'``, ``'-inf'`` or the shortest
round-tripping decimal), which is what the readers parse, so scores come back bitwise.
The file uses the WAL journal: readers never block the writer, and several scan processes
can write to one database (each transaction takes the write lock for one architecture).
A new database is made whole under a private name and linked into place: scans started at
once on a missing path all open the one complete file, and none removes it under another.

A scan database says so in its header: ``PRAGMA application_id`` is :data:`APPLICATION_ID` and
``PRAGMA user_version`` the layout :data:`SCHEMA_VERSION`. Only such a file, or an empty one
(which becomes one), is opened: any other SQLite file is another program's and is left exactly
as it was. Every open runs ``PRAGMA quick_check`` first; a damaged file is refused before
anything is read from it or written to it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from ._common import NUM_ARCHS, check_input_file
from .dbfile import (APPLICATION_ID, SCHEMA_VERSION, ScanDatabaseError, check_integrity, check_owner, quote_identifier,
                     create_database, retried_while_busy, sidecars, sqlite_errors, uri_path, writable)
from .scorefile import score_from_text

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "ScoreDB", "ScanDatabaseError", "StoredScore", "load_scores"]

_COLUMNS = (
    "arch_index",
    "arch",
    "method",
    "score",
    "score_text",
    "representative",
    "dataset",
    "data",
    "batch_size",
    "seed",
    "config_hash",
    "config",
    "seconds",
    "engine",
    "device",
    "version",
    "created_at",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    id             INTEGER PRIMARY KEY,
    arch_index     INTEGER NOT NULL,
    arch           TEXT    NOT NULL,
    method         TEXT    NOT NULL,
    score          REAL,             -- NULL when the score is NaN (SQLite has no NaN)
    score_text     TEXT    NOT NULL, -- repr(score): 'nan', '-inf' or an exact decimal
    representative INTEGER NOT NULL, -- index whose network gave the score (== arch_index unless deduplicated)
    dataset        TEXT,
    data           TEXT,             -- NULL: Gaussian random inputs
    batch_size     INTEGER NOT NULL,
    seed           INTEGER NOT NULL,
    config_hash    TEXT    NOT NULL,
    config         TEXT    NOT NULL, -- JSON of ScoreConfig.identity()
    seconds        REAL,             -- NULL for rows filled from a representative
    engine         TEXT,
    device         TEXT,
    version        TEXT    NOT NULL,
    created_at     TEXT    NOT NULL,
    UNIQUE (arch_index, config_hash)
);
CREATE INDEX IF NOT EXISTS scores_by_config ON scores (config_hash);
"""


@dataclass(frozen=True)
class StoredScore:
    """One architecture's row of the ``scores`` table, as :meth:`ScoreDB.load` reads it back.

    ``score`` is bitwise the float that was written (NaN and ``-inf`` included);
    ``representative`` the benchmark index whose network gave it (the row's own index unless
    it was filled from an isomorphism representative); ``seconds`` the scoring time, NaN for a
    filled row (stored as NULL)."""

    score: float
    representative: int
    seconds: float


class ScoreDB:
    """The ``scores`` table of one SQLite file. ``readonly=True`` never creates or writes."""

    def __init__(self, path, *, timeout: float = 30.0, readonly: bool = False):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"database path must be a str or path, got {type(path).__name__}")
        self.path = os.fspath(path)
        if not self.path:
            raise ValueError("database path is empty")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
            raise ValueError(f"database timeout must be a number of seconds >= 0, got {timeout!r}")
        self.timeout = float(timeout)
        self.readonly = readonly
        what = "an SQLite scan database written by 'nwot-fast scan'"
        if readonly:
            if not os.path.lexists(self.path):
                raise FileNotFoundError(f"scan database {self.path!r} does not exist")
            check_input_file(self.path, what)
            self._open_readonly()
            return
        if not os.path.lexists(self.path):
            create_database(self.path, lambda conn: _create_tables(conn, True), self.timeout)
        if os.path.isdir(self.path):
            raise ValueError(f"scan database path {self.path!r} is a directory; give a file path")
        check_input_file(self.path, what)
        if not writable(self.path):
            # Said before SQLite opens it: it would open the file read-only without a word,
            # leave a -wal and -shm beside it, and fail only at the first result.
            raise ScanDatabaseError(
                f"scan database {self.path!r} is read-only (file, directory or file system) while opening it; "
                "choose a writable --db path"
            )
        with self._errors("opening it"):
            self.conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            try:
                # Whose file, whole or damaged, and the layout first, before anything is changed:
                # another tool's SQLite file is refused as it was found (no WAL switch, no -wal /
                # -shm left beside it), a damaged one before a row is written into it.
                new = check_owner(self.conn, self.path, allow_new=True)
                check_integrity(self.conn, self.path)
                self._check_schema(require=not new)
                # WAL: readers never block the writer, and a killed writer leaves every committed
                # transaction intact. synchronous=NORMAL survives any process crash (only a power
                # loss can drop the last commits, never corrupt the file). A no-op on a scan
                # database; on an empty file that another scan is making one at this moment,
                # SQLite refuses the switch at once rather than wait: retried within the timeout.
                retried_while_busy(lambda: self.conn.execute("PRAGMA journal_mode=WAL"), self.timeout)
                self.conn.execute("PRAGMA synchronous=NORMAL")
                # A real write now, so that a read-only or locked database fails before any scoring.
                with self.transaction():
                    _create_tables(self.conn, new)
                    # A write statement takes the write lock for real even when it changes no row
                    # (CREATE TABLE IF NOT EXISTS of an existing table does not).
                    self.conn.execute("DELETE FROM scores WHERE 0")
            except BaseException:
                self.conn.close()
                raise

    def _open_readonly(self) -> None:
        """Open for reading only. A WAL database normally needs its -shm file beside it, even
        for readers; on read-only media or in a directory that cannot be written SQLite then
        cannot open it, and it is opened as immutable instead (nothing can be writing to it
        there). A -wal file with transactions not yet in the main file cannot be read that
        way: that is refused rather than showing an older state."""
        if self._open_query_only():
            return
        uri = "file:" + uri_path(self.path) + "?mode=ro"
        if not writable(self.path) and not sidecars(self.path):
            # A cleanly closed database that this process cannot write: a read-only connection
            # would create a -wal and -shm it can never remove. Nothing holds the file open for
            # writing (a writer would have created them), so it is read as immutable.
            uri += "&immutable=1"
        try:
            self.conn = sqlite3.connect(uri, uri=True, timeout=self.timeout, isolation_level=None)
            self.conn.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.OperationalError as e:
            self.close()
            msg = str(e).lower()
            if "locked" in msg or "busy" in msg:
                with self._errors("opening it for reading"):
                    raise
            wal = self.path + "-wal"
            if os.path.exists(wal) and os.path.getsize(wal) > 0:
                raise ScanDatabaseError(
                    f"scan database {self.path!r} cannot be opened for reading here ({e}) and its write-ahead "
                    f"log {wal!r} holds results not yet in the main file; copy both files to a writable "
                    "directory and read the copy"
                ) from e
            with self._errors("opening it for reading"):
                self.conn = sqlite3.connect(uri + "&immutable=1", uri=True, timeout=self.timeout,
                                            isolation_level=None)
        except sqlite3.DatabaseError:
            self.close()
            with self._errors("opening it for reading"):
                raise
        self._check_for_reading()

    def _open_query_only(self) -> bool:
        """Open a cleanly closed database (no -wal, -shm or -journal beside it) that this process
        may write through a read-write connection that refuses every write (query_only).
        Reading a WAL database creates a -wal and -shm; SQLite removes them when the last
        connection that may write closes, never after a read-only one. False (nothing open)
        when that cannot be done here; the read-only routes then apply."""
        if sidecars(self.path) or not writable(self.path):
            return False
        try:
            self.conn = sqlite3.connect("file:" + uri_path(self.path) + "?mode=rw", uri=True, timeout=self.timeout,
                                        isolation_level=None)
            self.conn.execute("PRAGMA query_only = ON")
            self.conn.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.DatabaseError:
            self.close()
            return False
        self._check_for_reading()
        return True

    def _check_for_reading(self) -> None:
        """An opened database is this program's, intact and of this schema; closed otherwise."""
        with self._errors("opening it for reading"):
            try:
                check_owner(self.conn, self.path, allow_new=False)
                check_integrity(self.conn, self.path)
                self._check_schema(require=True)
            except BaseException:
                self.close()
                raise

    def _errors(self, action: str):
        return sqlite_errors(self.path, action, self.timeout)

    def _check_schema(self, *, require: bool) -> None:
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "scores" not in tables:
            if require:
                raise ValueError(f"{self.path!r} has no 'scores' table; it was not written by 'nwot-fast scan'")
            return
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(scores)")}
        missing = [c for c in _COLUMNS if c not in have]
        if missing:
            raise ValueError(
                f"{self.path!r} has a 'scores' table of another layout (missing columns: {', '.join(missing)}); "
                "use a new --db path"
            )
        # Resuming and writing rely on one row per (arch_index, config_hash): without the
        # constraint the upsert of write() fails, after the scoring; found here, before it.
        unique = set()
        for _, name, is_unique, _, partial in self.conn.execute("PRAGMA index_list(scores)"):
            if is_unique and not partial:
                unique.add(tuple(r[2] for r in self.conn.execute(f"PRAGMA index_info({quote_identifier(name)})")))
        if ("arch_index", "config_hash") not in unique:
            raise ValueError(
                f"{self.path!r}: its 'scores' table lacks the UNIQUE (arch_index, config_hash) constraint of a scan "
                "database (changed by hand or by another program); use a new --db path"
            )

    @contextlib.contextmanager
    def transaction(self):
        """A context in which the statements run as one transaction: ``BEGIN IMMEDIATE`` (the
        write lock is taken at the start, so a locked database fails before any work), ``COMMIT``
        on leaving, ``ROLLBACK`` on any exception (re-raised). sqlite3 errors are not mapped here;
        callers wrap it in their own error context."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def load(self, config_hash: str) -> Dict[int, StoredScore]:
        """``{arch_index: StoredScore}`` for every row of one configuration (empty when it has
        none). Every row is checked: a value no scan writes is a ValueError naming the file and
        the row, never a wrong score."""
        with self._errors("reading scores"):
            rows = self.conn.execute(
                "SELECT id, arch_index, score, score_text, representative, seconds FROM scores WHERE config_hash = ?",
                (config_hash,),
            ).fetchall()
        return dict(self._stored(row) for row in rows)

    def _stored(self, row) -> Tuple[int, StoredScore]:
        """One row of :meth:`load`, checked: a value no scan writes (a flipped bit, an edit by
        hand) is a ValueError naming the file and the row, never a wrong score."""
        row_id, index, score, text, representative, seconds = row

        def bad(what: str) -> ValueError:
            return ValueError(f"scan database {self.path!r}, row id {row_id} (arch_index {index!r}): {what}; the row "
                              "is damaged or was changed by hand; scan into a new --db path")

        for name, value in (("arch_index", index), ("representative", representative)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < NUM_ARCHS:
                raise bad(f"{name} {value!r} is not a benchmark index 0..{NUM_ARCHS - 1}")
        try:
            value = score_from_text(text)
        except (TypeError, ValueError):
            raise bad(f"score_text {text!r} is not a score") from None
        # score (REAL, NULL for NaN) and score_text are written together from one float: they agree
        # bit for bit, so a change to either shows.
        if (score is None) != math.isnan(value) or not (score is None or score == value):
            raise bad(f"score_text {text!r} does not match score {score!r}")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))):
            raise bad(f"seconds {seconds!r} is not a number")
        return index, StoredScore(value, representative, float("nan") if seconds is None else float(seconds))

    def write(self, rows: Sequence[dict]) -> None:
        """Commit ``rows`` in one transaction. A real score (``representative == arch_index``)
        replaces a row filled from a representative; nothing else is ever overwritten."""
        if not rows:
            return
        cols = ", ".join(_COLUMNS)
        marks = ", ".join("?" for _ in _COLUMNS)
        update = ", ".join(
            f"{c} = excluded.{c}"
            for c in ("score", "score_text", "representative", "seconds", "engine", "device", "version", "created_at")
        )
        real_sql = (
            f"INSERT INTO scores ({cols}) VALUES ({marks}) ON CONFLICT (arch_index, config_hash) "
            f"DO UPDATE SET {update} WHERE scores.representative != scores.arch_index"
        )
        filled_sql = f"INSERT OR IGNORE INTO scores ({cols}) VALUES ({marks})"
        from .process import deferred_signals

        # A Ctrl-C or SIGTERM is delivered once the transaction has ended: cut inside it (even
        # between BEGIN and the block that would roll it back), it could leave it open.
        with self._errors("saving results"), deferred_signals():
            with self.transaction():
                for row in rows:
                    sql = real_sql if row["representative"] == row["arch_index"] else filled_sql
                    self.conn.execute(sql, tuple(row[c] for c in _COLUMNS))

    def count(self, config_hash: str) -> int:
        """The number of rows stored for one configuration (rows filled from a representative
        included); the rows themselves are not read or checked."""
        with self._errors("counting rows"):
            return int(
                self.conn.execute("SELECT COUNT(*) FROM scores WHERE config_hash = ?", (config_hash,)).fetchone()[0]
            )

    def configurations(self) -> List[dict]:
        """One summary per configuration stored: its identity, row counts and time span. Every
        row is checked as :meth:`load` checks it (a damaged row is a ValueError naming it)."""
        with self._errors("summarising"):
            for row in self.conn.execute(
                    "SELECT id, arch_index, score, score_text, representative, seconds FROM scores ORDER BY id"):
                self._stored(row)
            for config_hash, text in self.conn.execute("SELECT DISTINCT config_hash, config FROM scores"):
                self._config(config_hash, text)
            rows = self.conn.execute(
                "SELECT config_hash, MIN(config), COUNT(*), SUM(representative != arch_index), "
                "SUM(score_text = 'nan'), SUM(score_text = '-inf'), SUM(seconds), MIN(created_at), "
                "MAX(created_at), GROUP_CONCAT(DISTINCT version), GROUP_CONCAT(DISTINCT engine), "
                "GROUP_CONCAT(DISTINCT data) FROM scores GROUP BY config_hash ORDER BY MIN(id)"
            ).fetchall()
        out = []
        for h, cfg, n, reused, nan, neg_inf, secs, first, last, versions, engines, paths in rows:
            out.append(
                {
                    "config_hash": h,
                    "config": self._config(h, cfg),
                    "data_paths": sorted((paths or "").split(",")) if paths else [],
                    "rows": int(n),
                    "reused": int(reused or 0),
                    "nan": int(nan or 0),
                    "neg_inf": int(neg_inf or 0),
                    "scoring_seconds": float(secs or 0.0),
                    "first": first,
                    "last": last,
                    "versions": sorted((versions or "").split(",")),
                    "engines": sorted((engines or "").split(",")),
                }
            )
        return out

    def _config(self, config_hash, text) -> dict:
        """The ``config`` column of a configuration's rows: a JSON object (``ScoreConfig.identity()``)."""
        try:
            config = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            config = None
        if not isinstance(config, dict):
            with self._errors("summarising"):
                row = self.conn.execute("SELECT id, arch_index FROM scores WHERE config_hash IS ? AND config IS ? "
                                        "ORDER BY id LIMIT 1", (config_hash, text)).fetchone()
            where = f"row id {row[0]} (arch_index {row[1]!r})" if row else "a row"
            raise ValueError(f"scan database {self.path!r}, {where}, config hash {config_hash!r}: the config column "
                             f"{text!r:.80} is not a JSON object; the row is damaged or was changed by hand")
        return config

    def close(self) -> None:
        """Close the connection; closing again, or closing a store whose open failed, does nothing."""
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()
            self.conn = None

    def __enter__(self) -> "ScoreDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _create_tables(conn: sqlite3.Connection, new: bool) -> None:
    """The ``scores`` table and its index (kept when there); on a ``new`` (empty) file also the
    header that marks it a scan database, in the same transaction as the table, so that a file
    is ours whole or not at all."""
    for stmt in _SCHEMA.split(";"):
        if stmt.strip():
            conn.execute(stmt)
    if new:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _config_hash(config_or_hash) -> str:
    if hasattr(config_or_hash, "config_hash"):  # a ScoreConfig (not imported: this module stays torch-free)
        return config_or_hash.config_hash()
    if isinstance(config_or_hash, str) and config_or_hash:
        return config_or_hash
    raise TypeError(
        f"expected a ScoreConfig or a config hash string, got {type(config_or_hash).__name__} {config_or_hash!r}"
    )


def load_scores(db, config_or_hash, *, include_reused: bool = True, timeout: float = 30.0) -> Dict[int, float]:
    """``{arch_index: score}`` stored in the scan database ``db`` for one configuration (a
    :class:`ScoreConfig` or its ``config_hash()``). NaN and ``-inf`` come back as such.
    ``include_reused=False`` leaves out rows filled from an isomorphism representative."""
    chash = _config_hash(config_or_hash)
    with ScoreDB(db, timeout=timeout, readonly=True) as store:
        stored = store.load(chash)
    return {
        i: s.score for i, s in sorted(stored.items()) if include_reused or s.representative == i
    }
