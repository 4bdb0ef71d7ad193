"""The results store's file: its schema, the check of an existing file, and its creation such
that other processes never see a half-made store.

A new store is built under a temporary name in the destination folder (WAL mode, every table,
the schema version) and then hard-linked to its name (:func:`create_store_file`): a process
that opens the name sees either no file or a complete store. Without this, a reader that
opened the file between its creation and its ``CREATE TABLE`` statements (e.g. ``sweep
status`` while a worker starts the sweep) found a store without tables, which
:func:`check_tables` rightly reports as damaged.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

SCHEMA_VERSION = 1
TABLES = ("meta", "runs", "sweeps", "sweep_runs")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id     TEXT PRIMARY KEY,
    run_fn     TEXT NOT NULL,
    config     TEXT NOT NULL,
    status     TEXT NOT NULL DEFAULT 'pending'
               CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts   INTEGER NOT NULL DEFAULT 0,
    error      TEXT,
    worker     TEXT,
    host       TEXT,
    pid        INTEGER,
    heartbeat  REAL,
    created    REAL NOT NULL,
    started    REAL,
    finished   REAL,
    duration_s REAL,
    metrics    TEXT,
    checkpoint TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
CREATE TABLE IF NOT EXISTS sweeps (name TEXT PRIMARY KEY, spec TEXT NOT NULL,
                                   created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS sweep_runs (sweep TEXT NOT NULL, run_id TEXT NOT NULL,
                                       position INTEGER NOT NULL,
                                       PRIMARY KEY (sweep, run_id));
"""


def apply_schema(cur: sqlite3.Cursor | sqlite3.Connection, path: Path) -> None:
    """Create the missing tables and the schema version; ``ValueError`` if the file holds
    another schema version."""
    for statement in SCHEMA.strip().split(";"):
        if statement.strip():
            cur.execute(statement)
    row = cur.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    if row is None:
        cur.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
    elif int(row[0]) != SCHEMA_VERSION:
        raise ValueError(f"results store {str(path)!r} has schema {row[0]}, this code reads "
                         f"schema {SCHEMA_VERSION}")


def check_tables(conn: sqlite3.Connection, path: Path) -> None:
    """An existing store must hold every table: a dropped one is damage, not a new sweep
    (recreating it empty would hide the loss)."""
    have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    missing = [t for t in TABLES if t not in have]
    if missing:
        raise ValueError(f"results store {str(path)!r} is missing table(s) {missing}: it is "
                         "damaged or not a results store; restore it from a backup or choose "
                         "a new output folder")


def create_store_file(path: Path) -> bool:
    """Create the store ``path`` complete, or leave it: True if this call created it; False
    if it existed already (another process may have just created it) or the filesystem has
    no hard links (the caller then creates the tables in place). ``OSError`` /
    ``sqlite3.Error`` when the folder cannot be written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.creating")
    try:
        conn = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN IMMEDIATE")
            apply_schema(conn, path)
            conn.execute("COMMIT")
        finally:
            conn.close()  # the last connection checkpoints the WAL into the file
        try:
            os.link(tmp, path)  # atomic; refuses an existing name
        except FileExistsError:
            return False
        except OSError:
            return False
        return True
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)


__all__ = ["SCHEMA_VERSION", "TABLES", "apply_schema", "check_tables", "create_store_file"]
