"""The SQLite store of a scan: the ``scores`` table, its schema, and sqlite3 errors mapped to
the package's error kinds.

Rows are keyed by ``(arch_index, config_hash)`` (:meth:`nwot_fast.config.ScoreConfig.config_hash`).
Scores are stored faithfully: ``score`` is a REAL (SQLite cannot hold NaN and stores it as
NULL), and ``score_text`` holds ``repr(score)`` (``'nan'``, ``'-inf'`` or the shortest
round-tripping decimal), which is what the readers parse, so scores come back bitwise.
The file uses the WAL journal: readers never block the writer, and several scan processes
can write to one database (each transaction takes the write lock for one architecture).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from dataclasses import dataclass
from typing import Dict, List, Sequence

from ._common import check_input_file
from .scorefile import score_from_text

__all__ = ["ScoreDB", "ScanDatabaseError", "StoredScore", "load_scores"]

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


class ScanDatabaseError(RuntimeError):
    """The scan database cannot be written right now (locked by another process, read-only,
    disk full): a resource problem, not a mistake in the input. Results already committed
    are kept."""


@dataclass(frozen=True)
class StoredScore:
    score: float
    representative: int
    seconds: float


def _sqlite_errors(path: str, action: str, timeout: float):
    """Turn sqlite3 errors into the package's error kinds, naming the file."""

    @contextlib.contextmanager
    def ctx():
        try:
            yield
        except sqlite3.OperationalError as e:
            msg = str(e).lower()
            if "locked" in msg or "busy" in msg:
                raise ScanDatabaseError(
                    f"scan database {path!r} is locked by another process or connection "
                    f"(waited {timeout:g} s) while {action}; wait for it to finish, raise --db-timeout, "
                    "or use another --db path"
                ) from e
            if "readonly" in msg or "read-only" in msg:
                raise ScanDatabaseError(
                    f"scan database {path!r} is read-only (file, directory or file system) while {action}; "
                    "choose a writable --db path"
                ) from e
            if "unable to open" in msg:
                parent = os.path.dirname(os.path.abspath(path))
                if not os.path.isdir(parent):
                    raise FileNotFoundError(
                        f"cannot create scan database {path!r}: directory {parent!r} does not exist"
                    ) from e
                if os.path.isdir(path):
                    raise ValueError(f"scan database path {path!r} is a directory; give a file path") from e
                raise ScanDatabaseError(
                    f"cannot open scan database {path!r} for writing (read-only location or no permission) "
                    f"while {action}; choose a writable --db path"
                ) from e
            if "disk" in msg or "full" in msg:
                raise ScanDatabaseError(f"scan database {path!r}: {e} while {action}; free disk space") from e
            raise ScanDatabaseError(f"scan database {path!r}: {e} while {action}") from e
        except sqlite3.DatabaseError as e:
            raise ValueError(
                f"{path!r} is not a usable nwot_fast scan database ({e}); give a new path or a database "
                "written by 'nwot-fast scan'"
            ) from e

    return ctx()


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
        if os.path.lexists(self.path):
            if os.path.isdir(self.path):
                raise ValueError(f"scan database path {self.path!r} is a directory; give a file path")
            check_input_file(self.path, what)
        with self._errors("opening it"):
            self.conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            try:
                # The layout first, before anything is changed: another tool's SQLite file is
                # refused as it was found (no WAL switch, no -wal / -shm left beside it).
                self._check_schema(require=False)
                # WAL: readers never block the writer, and a killed writer leaves every committed
                # transaction intact. synchronous=NORMAL survives any process crash (only a power
                # loss can drop the last commits, never corrupt the file).
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                # A real write now, so that a read-only or locked database fails before any scoring.
                with self.transaction():
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            self.conn.execute(stmt)
            except BaseException:
                self.conn.close()
                raise

    def _open_readonly(self) -> None:
        """Open for reading only. A WAL database normally needs its -shm file beside it, even
        for readers; on read-only media or in a directory that cannot be written SQLite then
        cannot open it, and it is opened as immutable instead (nothing can be writing to it
        there). A -wal file with transactions not yet in the main file cannot be read that
        way: that is refused rather than showing an older state."""
        uri = "file:" + _uri_path(self.path) + "?mode=ro"
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
        with self._errors("opening it for reading"):
            try:
                self._check_schema(require=True)
            except BaseException:
                self.close()
                raise

    def _errors(self, action: str):
        return _sqlite_errors(self.path, action, self.timeout)

    def _check_schema(self, *, require: bool) -> None:
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        others = sorted(t for t in tables if t != "scores" and not t.startswith("sqlite_"))
        if others:
            raise ValueError(
                f"{self.path!r} is another program's SQLite database (tables: {', '.join(others[:8])}); "
                "it was not written by 'nwot-fast scan' and is left unchanged; use a new --db path"
            )
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

    @contextlib.contextmanager
    def transaction(self):
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def load(self, config_hash: str) -> Dict[int, StoredScore]:
        with self._errors("reading scores"):
            rows = self.conn.execute(
                "SELECT arch_index, score_text, representative, seconds FROM scores WHERE config_hash = ?",
                (config_hash,),
            ).fetchall()
        return {
            int(i): StoredScore(score_from_text(t), int(r), float("nan") if s is None else float(s))
            for i, t, r, s in rows
        }

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
        with self._errors("saving results"):
            with self.transaction():
                for row in rows:
                    sql = real_sql if row["representative"] == row["arch_index"] else filled_sql
                    self.conn.execute(sql, tuple(row[c] for c in _COLUMNS))

    def count(self, config_hash: str) -> int:
        with self._errors("counting rows"):
            return int(
                self.conn.execute("SELECT COUNT(*) FROM scores WHERE config_hash = ?", (config_hash,)).fetchone()[0]
            )

    def configurations(self) -> List[dict]:
        """One summary per configuration stored: its identity, row counts and time span."""
        with self._errors("summarising"):
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
                    "config": json.loads(cfg),
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

    def close(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()
            self.conn = None

    def __enter__(self) -> "ScoreDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _uri_path(path: str) -> str:
    from urllib.parse import quote

    return quote(os.path.abspath(path))


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
