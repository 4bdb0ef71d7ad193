"""The results store: one SQLite file holding every run's config, status, metrics, checkpoint.

SQLite in WAL mode, every write in a ``BEGIN IMMEDIATE`` transaction, so any number of worker
processes on one machine can share the file. A run's life::

    pending --claim()--> running --finish()--> done
                            |  \\--fail()----> failed --(retry: claim again)--> running
                            \\-- worker died: stale, claimable again (attempts + 1)

* :meth:`ResultStore.claim` picks one claimable run and marks it ``running`` with the worker's
  id, host, pid, a heartbeat time and ``attempts + 1``, atomically: two workers never get the
  same run. Claimable: ``pending``; ``running`` whose heartbeat is older than ``stale_after``
  seconds or whose pid is gone (same host); ``failed`` when ``retry_failed`` and
  ``attempts < max_attempts``.
* A *lease* is ``(run_id, worker, attempt)``; :meth:`heartbeat`, :meth:`finish` and
  :meth:`fail` act only while the lease holds (a worker declared stale whose run was claimed
  again cannot overwrite the new attempt). :meth:`finish` also accepts a late result of a
  stale attempt while the run is not ``done`` yet: the first finished result wins, and a
  ``done`` run is never changed again.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualsparse.experiments.spec import RunSpec
from dualsparse.experiments.store_schema import (
    SCHEMA_VERSION,
    TABLES,
    apply_schema,
    check_tables,
    create_store_file,
)
from dualsparse.validation import check_choice, check_int, check_real

STATUSES = ("pending", "running", "done", "failed")


@dataclass(frozen=True)
class RunRecord:
    """One row of the store (``config``/``metrics`` decoded from JSON; times in Unix s)."""

    run_id: str
    run_fn: str
    config: dict[str, Any]
    status: str
    attempts: int
    error: str | None
    worker: str | None
    host: str | None
    pid: int | None
    heartbeat: float | None
    created: float
    started: float | None
    finished: float | None
    duration_s: float | None
    metrics: dict[str, Any] | None
    checkpoint: str | None

    @property
    def lease(self) -> tuple[str, str, int]:
        """``(run_id, worker, attempt)`` of the claim that produced this record."""
        if self.worker is None:
            raise ValueError(f"run {self.run_id} is not claimed")
        return self.run_id, self.worker, self.attempts


def worker_id(tag: str = "worker") -> str:
    """A worker id unique on this machine: ``tag@host:pid:random``."""
    return f"{tag}@{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ResultStore:
    """A SQLite results store (created with its folder if missing).

    Args:
        path: the database file.
        timeout: seconds a writer waits for the lock before ``sqlite3.OperationalError``.
    """

    def __init__(self, path: str | Path, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        if self.path.exists() and not self.path.is_file():
            raise ValueError(f"results store {str(self.path)!r} is not a file")
        existing = self.path.is_file() and self.path.stat().st_size > 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():  # appears complete, or not at all, to other processes
                create_store_file(self.path)
            existing = existing or (self.path.is_file() and self.path.stat().st_size > 0)
            self._conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise ValueError(f"results store {str(self.path)!r} cannot be opened: {exc}"
                             ) from None
        self._conn.row_factory = sqlite3.Row
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            if existing:
                self._check_tables()
            self._create()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise ValueError(f"{str(self.path)!r} is not a SQLite results store: {exc}"
                             ) from None
        except ValueError:
            self._conn.close()
            raise

    def _check_tables(self) -> None:
        check_tables(self._conn, self.path)

    def _create(self) -> None:
        with self.transaction() as cur:
            apply_schema(cur, self.path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """A ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on error."""
        cur = self._conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise ValueError(f"results store {str(self.path)!r} is locked by another "
                                 f"process (waited {self.timeout:g} s); try again later"
                                 ) from None
            raise ValueError(f"results store {str(self.path)!r}: {exc}") from None
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    # ----------------------------------------------------------------------------- adding
    def add_sweep(self, name: str, spec: dict[str, Any], runs: Iterable[RunSpec]) -> int:
        """Register a sweep and its runs; returns how many runs were new to the store.

        Runs already in the store (same id) keep their status and results; the sweep's
        listing is replaced by ``runs`` (a run may belong to several sweeps).
        """
        now = time.time()
        new = 0
        runs = list(runs)
        with self.transaction() as cur:
            cur.execute("INSERT INTO sweeps VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE "
                        "SET spec=excluded.spec, updated=excluded.updated",
                        (name, json.dumps(spec, sort_keys=True), now, now))
            cur.execute("DELETE FROM sweep_runs WHERE sweep=?", (name,))
            for i, r in enumerate(runs):
                cur.execute("INSERT OR IGNORE INTO runs (run_id, run_fn, config, created) "
                            "VALUES (?, ?, ?, ?)",
                            (r.run_id, r.run_fn, json.dumps(r.config, sort_keys=True),
                             now + i * 1e-6))
                new += cur.rowcount
                cur.execute("INSERT OR IGNORE INTO sweep_runs VALUES (?, ?, ?)",
                            (name, r.run_id, i))
        return new

    # ----------------------------------------------------------------------------- claiming
    def claim(self, worker: str, sweep: str | None = None, stale_after: float = 600.0,
              retry_failed: bool = False, max_attempts: int = 3,
              pid: int | None = None) -> RunRecord | None:
        """Atomically take one claimable run (see module docstring); None if there is none.

        Args:
            worker: the claiming worker's id (:func:`worker_id`).
            sweep: only runs of this sweep (default: any run in the store).
            stale_after: seconds without heartbeat after which a ``running`` run is claimable.
            retry_failed: also claim ``failed`` runs with ``attempts < max_attempts``.
            pid: process that will execute the run (default: this one); recorded with the
                host so that a dead process's run is claimable at once.
        """
        check_real("stale_after (seconds)", stale_after, low=0.0, low_open=True)
        check_int("max_attempts", max_attempts, low=1)
        host = socket.gethostname()
        now = time.time()
        join = ("JOIN sweep_runs s ON s.run_id = r.run_id AND s.sweep = :sweep "
                if sweep is not None else "")
        order = "s.position" if sweep is not None else "r.created"
        sql = (f"SELECT r.run_id, r.status, r.host, r.pid, r.heartbeat, r.attempts FROM runs r "
               f"{join}WHERE r.status = 'pending' OR r.status = 'running' "
               f"OR (r.status = 'failed' AND :retry AND r.attempts < :max_attempts) "
               f"ORDER BY {order}")
        with self.transaction() as cur:
            chosen = None
            for row in cur.execute(sql, {"sweep": sweep, "retry": int(retry_failed),
                                         "max_attempts": max_attempts}).fetchall():
                if row["status"] != "running":
                    chosen = row["run_id"]
                    break
                stale = row["heartbeat"] is None or now - row["heartbeat"] > stale_after
                dead = row["host"] == host and row["pid"] is not None and not _pid_alive(
                    row["pid"])
                if stale or dead:
                    chosen = row["run_id"]
                    break
            if chosen is None:
                return None
            cur.execute("UPDATE runs SET status='running', attempts=attempts+1, worker=?, "
                        "host=?, pid=?, heartbeat=?, started=?, finished=NULL "
                        "WHERE run_id=?", (worker, host, os.getpid() if pid is None else pid,
                                           now, now, chosen))
            return self._get(cur, chosen)

    def heartbeat(self, lease: tuple[str, str, int]) -> bool:
        """Refresh the heartbeat of a held lease; False if the lease was lost."""
        run, worker, attempt = lease
        with self.transaction() as cur:
            cur.execute("UPDATE runs SET heartbeat=? WHERE run_id=? AND worker=? AND attempts=? "
                        "AND status='running'", (time.time(), run, worker, attempt))
            return cur.rowcount == 1

    def finish(self, lease: tuple[str, str, int], metrics: dict[str, Any],
               checkpoint: str | None = None) -> bool:
        """Store a run's result and mark it ``done``; False if it was already done.

        ``metrics`` must be JSON-able without NaN or infinities (``ValueError`` otherwise;
        :func:`dualsparse.serialisation.jsonable` replaces them by None).
        """
        run, worker, attempt = lease
        try:
            text = json.dumps(metrics, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metrics of run {run} are not JSON-able: {exc}") from None
        now = time.time()
        with self.transaction() as cur:
            row = cur.execute("SELECT status, started FROM runs WHERE run_id=?",
                              (run,)).fetchone()
            if row is None:
                raise ValueError(f"unknown run id {run!r}")
            if row["status"] == "done":
                return False
            cur.execute("UPDATE runs SET status='done', metrics=?, checkpoint=?, finished=?, "
                        "duration_s=?, error=NULL, worker=?, attempts=? WHERE run_id=?",
                        (text, checkpoint, now, now - (row["started"] or now), worker,
                         attempt, run))
            return True

    def fail(self, lease: tuple[str, str, int], error: str) -> bool:
        """Mark a run ``failed`` with ``error`` text, if the lease still holds."""
        run, worker, attempt = lease
        with self.transaction() as cur:
            cur.execute("UPDATE runs SET status='failed', error=?, finished=? WHERE run_id=? "
                        "AND worker=? AND attempts=? AND status='running'",
                        (error, time.time(), run, worker, attempt))
            return cur.rowcount == 1

    def release(self, lease: tuple[str, str, int]) -> bool:
        """Give a claimed run back (``pending``, attempt not counted), if the lease holds."""
        run, worker, attempt = lease
        with self.transaction() as cur:
            cur.execute("UPDATE runs SET status='pending', attempts=attempts-1, worker=NULL, "
                        "pid=NULL, heartbeat=NULL WHERE run_id=? AND worker=? AND attempts=? "
                        "AND status='running'", (run, worker, attempt))
            return cur.rowcount == 1

    def reset_failed(self, sweep: str | None = None) -> int:
        """Put ``failed`` runs back to ``pending`` with zero attempts; returns how many."""
        with self.transaction() as cur:
            where = ("run_id IN (SELECT run_id FROM sweep_runs WHERE sweep=?)"
                     if sweep is not None else "1")
            cur.execute(f"UPDATE runs SET status='pending', attempts=0 WHERE status='failed' "
                        f"AND {where}", (sweep,) if sweep is not None else ())
            return cur.rowcount

    # ----------------------------------------------------------------------------- reading
    def _get(self, cur: sqlite3.Cursor, run: str) -> RunRecord:
        row = cur.execute("SELECT * FROM runs WHERE run_id=?", (run,)).fetchone()
        if row is None:
            raise ValueError(f"unknown run id {run!r}")
        return _record(row, self.path)

    def get(self, run: str) -> RunRecord:
        """The record of run ``run`` (``ValueError`` if unknown)."""
        return self._get(self._conn.cursor(), run)

    def records(self, sweep: str | None = None, status: str | None = None) -> list[RunRecord]:
        """Runs (of ``sweep``, with ``status``) in sweep order (or creation order)."""
        if status is not None:
            check_choice("status", status, STATUSES)
        if sweep is not None and sweep not in self.sweeps():
            raise ValueError(f"no sweep named {sweep!r} in {str(self.path)!r}; sweeps: "
                             f"{self.sweeps()}")
        sql, params = "SELECT r.* FROM runs r ", []
        if sweep is not None:
            sql += "JOIN sweep_runs s ON s.run_id = r.run_id AND s.sweep = ? "
            params.append(sweep)
        if status is not None:
            sql += "WHERE r.status = ? "
            params.append(status)
        sql += "ORDER BY " + ("s.position" if sweep is not None else "r.created")
        return [_record(r, self.path) for r in self._conn.execute(sql, params).fetchall()]

    def counts(self, sweep: str | None = None) -> dict[str, int]:
        """Number of runs per status (every status present, 0 when none)."""
        return status_counts(self.records(sweep))

    def sweeps(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT name FROM sweeps ORDER BY created")]

    def sweep_spec(self, name: str) -> dict[str, Any]:
        row = self._conn.execute("SELECT spec FROM sweeps WHERE name=?", (name,)).fetchone()
        if row is None:
            raise ValueError(f"no sweep named {name!r} in {str(self.path)!r}")
        return json.loads(row[0])


def status_counts(records: Iterable[RunRecord]) -> dict[str, int]:
    """Number of ``records`` per status (every status present, 0 when none)."""
    out = dict.fromkeys(STATUSES, 0)
    for r in records:
        out[r.status] += 1
    return out


def _record(row: sqlite3.Row, path: Path) -> RunRecord:
    """A row as a record; ``ValueError`` naming the run, column and store for a damaged
    row (JSON that does not parse or is not an object)."""
    d = dict(row)
    for key in ("config", "metrics"):
        if d[key] is None and key == "metrics":
            continue
        try:
            value = json.loads(d[key])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"results store {str(path)!r}: run {d['run_id']} has a damaged "
                             f"{key!r} column ({exc}); delete or repair that row") from None
        if not isinstance(value, dict):
            raise ValueError(f"results store {str(path)!r}: run {d['run_id']} {key!r} is not "
                             "a JSON object; delete or repair that row")
        d[key] = value
    return RunRecord(**d)


__all__ = ["SCHEMA_VERSION", "TABLES", "STATUSES", "ResultStore", "RunRecord", "status_counts",
           "worker_id"]
