"""Results store: lifecycle, leases, stale/dead workers, concurrent claims, kill and resume."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from dualsparse.experiments.spec import SweepSpec
from dualsparse.experiments.store import ResultStore, worker_id


def _sweep(tmp_path, n=4, name="s", **base):
    return SweepSpec.from_dict({"name": name, "run": "echo", "output": str(tmp_path / "out"),
                                "base": base, "grid": {"i": list(range(n))}})


def _store_with(tmp_path, n=4, **base):
    spec = _sweep(tmp_path, n, **base)
    store = ResultStore(spec.store_path)
    assert store.add_sweep(spec.name, spec.to_dict(), spec.expand()) == n
    return spec, store


def test_lifecycle_and_idempotent_add(tmp_path):
    spec, store = _store_with(tmp_path)
    assert store.add_sweep(spec.name, spec.to_dict(), spec.expand()) == 0
    assert store.counts("s") == {"pending": 4, "running": 0, "done": 0, "failed": 0}
    w = worker_id()
    rec = store.claim(w, "s")
    assert rec.status == "running" and rec.attempts == 1 and rec.worker == w
    assert rec.config == {"i": 0}  # sweep order
    assert store.heartbeat(rec.lease)
    assert store.finish(rec.lease, {"test_ppl": 1.5}, "ckpt")
    done = store.get(rec.run_id)
    assert done.status == "done" and done.metrics == {"test_ppl": 1.5}
    assert done.checkpoint == "ckpt" and done.duration_s >= 0
    assert not store.finish(rec.lease, {"test_ppl": 9.0})  # a done run never changes
    assert store.get(rec.run_id).metrics == {"test_ppl": 1.5}
    rec2 = store.claim(w, "s")
    assert store.fail(rec2.lease, "Traceback ...\nValueError: boom")
    assert store.get(rec2.run_id).error.endswith("boom")
    assert store.counts("s") == {"pending": 2, "running": 0, "done": 1, "failed": 1}
    store.close()


def test_bad_input(tmp_path):
    spec, store = _store_with(tmp_path)
    rec = store.claim(worker_id(), "s")
    with pytest.raises(ValueError, match="not JSON-able"):
        store.finish(rec.lease, {"ppl": float("nan")})
    with pytest.raises(ValueError, match="no sweep named"):
        store.records("other")
    with pytest.raises(ValueError, match="status must be"):
        store.records(status="finished")
    with pytest.raises(ValueError, match="stale_after"):
        store.claim("w", stale_after=0)
    (tmp_path / "junk.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(ValueError, match="not a SQLite results store"):
        ResultStore(tmp_path / "junk.sqlite")


def test_failed_runs_retry_up_to_max_attempts(tmp_path):
    _, store = _store_with(tmp_path, n=1)
    for attempt in (1, 2):
        rec = store.claim("w", retry_failed=True, max_attempts=2)
        assert rec.attempts == attempt
        store.fail(rec.lease, "boom")
    assert store.claim("w", retry_failed=True, max_attempts=2) is None
    assert store.claim("w") is None
    assert store.reset_failed("s") == 1
    assert store.claim("w").attempts == 1


def test_stale_heartbeat_is_reclaimed_and_old_lease_is_dead(tmp_path):
    _, store = _store_with(tmp_path, n=1)
    # claimed "by" a live process on another host: only staleness frees it
    old = store.claim("w-old", stale_after=60)
    store._conn.execute("UPDATE runs SET host='elsewhere', heartbeat=? WHERE run_id=?",
                        (time.time() - 30, old.run_id))
    assert store.claim("w-new", stale_after=60) is None
    store._conn.execute("UPDATE runs SET heartbeat=? WHERE run_id=?",
                        (time.time() - 120, old.run_id))
    new = store.claim("w-new", stale_after=60)
    assert new.run_id == old.run_id and new.attempts == 2
    assert not store.heartbeat(old.lease)   # the old worker learns it lost the run
    assert not store.fail(old.lease, "late error")
    assert store.get(old.run_id).status == "running"
    # a late result of the old attempt is accepted once (first result wins) ...
    assert store.finish(old.lease, {"v": "old"})
    # ... and the new attempt's result is then refused
    assert not store.finish(new.lease, {"v": "new"})
    assert store.get(old.run_id).metrics == {"v": "old"}


def test_dead_pid_on_this_host_is_reclaimed_at_once(tmp_path):
    _, store = _store_with(tmp_path, n=1)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    rec = store.claim("w-dead", pid=proc.pid)
    assert store.claim("w2", stale_after=3600) is not None  # its pid is gone: claimable
    assert rec.attempts == 1


def test_release_gives_the_run_back(tmp_path):
    _, store = _store_with(tmp_path, n=1)
    rec = store.claim("w")
    assert store.release(rec.lease)
    again = store.get(rec.run_id)
    assert again.status == "pending" and again.attempts == 0


def test_runs_shared_between_sweeps(tmp_path):
    spec, store = _store_with(tmp_path, n=3)
    other = _sweep(tmp_path, 5, name="t")
    assert store.add_sweep("t", other.to_dict(), other.expand()) == 2
    assert len(store.records("t")) == 5 and len(store.records()) == 5
    assert store.sweeps() == ["s", "t"]
    assert store.sweep_spec("t")["name"] == "t"


_CLAIMER = """
import os, sys, time
from pathlib import Path
from dualsparse.experiments.store import ResultStore, worker_id
path, log_dir, go = sys.argv[1:4]
w = worker_id("proc")
while not os.path.exists(go):
    time.sleep(0.01)
with ResultStore(path, timeout=120) as store:
    while (rec := store.claim(w)) is not None:
        (Path(log_dir) / f"{rec.run_id}-{os.getpid()}").touch()
        assert store.finish(rec.lease, {"by": w})
"""


def test_concurrent_workers_never_lose_or_duplicate_runs(tmp_path):
    spec, store = _store_with(tmp_path, n=60)
    ids = {r.run_id for r in store.records()}
    store.close()
    logs, go = tmp_path / "claims", tmp_path / "go"
    logs.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIMER, str(spec.store_path), str(logs),
                               str(go)], stderr=subprocess.PIPE) for _ in range(4)]
    time.sleep(1.0)
    go.touch()  # all four start claiming at once
    errors = [p.communicate(timeout=240)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    claimed = [f.name.split("-")[0] for f in logs.iterdir()]
    assert sorted(claimed) == sorted(ids)  # every run exactly once
    with ResultStore(spec.store_path) as store:
        recs = store.records()
        assert all(r.status == "done" and r.attempts == 1 for r in recs)
    con = sqlite3.connect(spec.store_path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_killed_worker_leaves_a_resumable_sweep(tmp_path):
    gate = tmp_path / "gate"
    spec_file = tmp_path / "spec.yaml"
    out = tmp_path / "out"
    spec_file.write_text(
        f"name: k\nrun: echo\noutput: {out}\n"
        f"base: {{wait_for: {gate}, marker_dir: {tmp_path / 'marks'}}}\n"
        "grid:\n  i: [0, 1, 2]\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dualsparse.experiments", "sweep", "run",
                             str(spec_file), "--threads", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    store_path = out / "results.sqlite"
    deadline = time.time() + 120
    running = None
    while time.time() < deadline and running is None:
        time.sleep(0.2)
        if store_path.exists():
            with ResultStore(store_path) as store:
                running = next((r for r in store.records() if r.status == "running"), None)
    assert running is not None, proc.communicate(timeout=5)[0]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    with ResultStore(store_path) as store:
        assert store.get(running.run_id).status == "running"  # left behind by the dead worker
    gate.touch()
    from dualsparse.experiments.cli import main
    assert main(["sweep", "run", str(spec_file), "--quiet"]) == 0
    with ResultStore(store_path) as store:
        recs = store.records("k")
        assert [r.status for r in recs] == ["done"] * 3
        assert store.get(running.run_id).attempts == 2
        assert sum(r.attempts for r in recs) == 4
    assert len(list((tmp_path / "marks").iterdir())) == 3  # each run finished exactly once
