"""Whole-space NAS-Bench-201 score tables, shipped with the package, with their provenance.

Each table holds one score (``jacob_cov`` or ``hook_logdet``) in one precision for a set of
benchmark indices (all 15,625 for the float32 tables; 500 seeded random ones for the float64
tables, which document the float32 error on real rows), scored under a fixed protocol (the
first 128 CIFAR-10 training images, batch 128, one fixed batch, seed 0 before each
architecture), with a record of where, when and how (:mod:`nwot_fast.tables.table`).

    >>> from nwot_fast import tables
    >>> tables.list_tables()                       # what ships: name, method, dtype, rows
    >>> t = tables.load("hook_logdet.float32")     # checked against its record
    >>> t.score(6111), t.provenance["scan"]["command"]
    >>> tables.verify(t, "cifar-10-batches-py", sample=20).passed

``load`` and ``list_tables`` import neither torch nor the scoring code; ``build`` (export from
a scan database) and ``verify`` (recompute rows on this machine) do.
"""

from __future__ import annotations

from .table import (FORMAT, SHIPPED_DIR, ScoreTable, TableIntegrityError, float32_error, list_tables, read_table,
                    summary_counts)

__all__ = ["FORMAT", "SHIPPED_DIR", "ScoreTable", "TableIntegrityError", "build", "float32_error", "list_tables",
           "load", "summary_counts", "verify"]


def load(table, directory=None) -> ScoreTable:
    """A table by name (from ``directory``, default the tables shipped with the package) or by
    the path of its ``.csv`` / ``.json``; see :func:`nwot_fast.tables.table.read_table`."""
    return read_table(table, directory)


def build(db, **options) -> ScoreTable:
    """Export a table from a scan database: :func:`nwot_fast.tables.export.build_table`."""
    from .export import build_table

    return build_table(db, **options)


def verify(table, data, **options):
    """Recompute random rows of ``table`` (a :class:`ScoreTable` or a name / path for
    :func:`load`) on this machine: :func:`nwot_fast.tables.verification.verify_table`."""
    from .verification import verify_table

    return verify_table(table if isinstance(table, ScoreTable) else load(table), data, **options)
