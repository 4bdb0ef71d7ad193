"""Faults of the results store and the report command give one line naming the store, run or
flag: a damaged row, a dropped table, a locked store, an unwritable folder, bad report paths."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from dualsparse.experiments import store_schema
from dualsparse.experiments.cli import main
from dualsparse.experiments.spec import SweepSpec
from dualsparse.experiments.store import ResultStore


def _store(tmp_path: Path) -> tuple[Path, Path]:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(f"name: s\nrun: echo\noutput: {tmp_path / 'out'}\n"
                         "grid:\n  i: [0, 1]\n")
    spec = SweepSpec.from_dict({"name": "s", "run": "echo", "output": str(tmp_path / "out"),
                                "grid": {"i": [0, 1]}})
    with ResultStore(spec.store_path) as store:
        store.add_sweep("s", spec.to_dict(), spec.expand())
    return spec.store_path, spec_file


def test_a_damaged_row_is_named(tmp_path: Path, capsys) -> None:
    path, spec_file = _store(tmp_path)
    with sqlite3.connect(path) as db:
        (run_id,) = db.execute("SELECT run_id FROM runs LIMIT 1").fetchone()
        db.execute("UPDATE runs SET config='{broken' WHERE run_id=?", (run_id,))
    for argv in (["sweep", "status", str(spec_file)], ["sweep", "run", str(spec_file)],
                 ["report", str(spec_file)]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert run_id in err and str(path) in err and "'config'" in err, argv


def test_a_dropped_table_is_not_recreated_empty(tmp_path: Path, capsys) -> None:
    path, spec_file = _store(tmp_path)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE sweep_runs")
    assert main(["sweep", "status", str(spec_file)]) == 1
    assert "missing table(s) ['sweep_runs']" in capsys.readouterr().err
    with sqlite3.connect(path) as db:  # and nothing was created behind the user's back
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "sweep_runs" not in names


def test_a_locked_store_gives_a_clear_error(tmp_path: Path) -> None:
    path, _ = _store(tmp_path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(ValueError, match=r"is locked by another process \(waited 0.2 s\)"):
            ResultStore(path, timeout=0.2).reset_failed()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_named(tmp_path: Path, capsys) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(f"name: s\nrun: echo\noutput: {ro / 'out'}\n")
    ro.chmod(0o500)
    try:
        assert main(["sweep", "run", str(spec_file)]) == 1
        err = capsys.readouterr().err
        assert "results store" in err and str(ro) in err
    finally:
        ro.chmod(0o700)


def test_an_output_folder_that_cannot_be_created_is_named(tmp_path: Path, capsys) -> None:
    (tmp_path / "afile").write_text("x")  # output below a file: unwritable, even for root
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(f"name: s\nrun: echo\noutput: {tmp_path / 'afile' / 'out'}\n")
    assert main(["sweep", "run", str(spec_file)]) == 1
    err = capsys.readouterr().err
    assert "results store" in err and "cannot be opened" in err and "Traceback" not in err


def test_report_paths_are_checked_first(tmp_path: Path, capsys) -> None:
    _, spec_file = _store(tmp_path)
    (tmp_path / "afile").write_text("x")
    assert main(["report", str(spec_file), "--out", str(tmp_path / "afile")]) == 1
    assert "--out" in capsys.readouterr().err
    assert main(["report", str(spec_file), "--notes", str(tmp_path / "missing.md")]) == 1
    err = capsys.readouterr().err
    assert "--notes" in err and "missing.md" in err


def test_a_new_store_appears_complete_or_not_at_all(tmp_path: Path, monkeypatch) -> None:
    """A reader opening the store while a worker creates it must never find the file without
    its tables (it would report the store as damaged): the file is built under another name
    and linked into place only once every table and the schema version are in it."""
    seen = []
    real_link = os.link

    def checking_link(src, dst):
        assert not Path(dst).exists()  # the name appears only now
        with sqlite3.connect(f"file:{src}?mode=ro", uri=True) as conn:
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
            seen.append((tables, conn.execute("SELECT value FROM meta").fetchall(),
                         conn.execute("PRAGMA journal_mode").fetchone()[0]))
        real_link(src, dst)

    monkeypatch.setattr(store_schema.os, "link", checking_link)
    path = tmp_path / "new" / "results.sqlite"
    with ResultStore(path) as store:
        assert store.records() == []
    assert seen == [(set(store_schema.TABLES), [("1",)], "wal")]
    assert not [p for p in path.parent.iterdir() if ".creating" in p.name]  # no temp left
    monkeypatch.setattr(store_schema.os, "link", real_link)
    with ResultStore(path) as store:  # an existing store is opened, not created again
        assert store.records() == []
    assert len(seen) == 1


def test_a_store_is_created_in_place_where_the_filesystem_has_no_hard_links(
        tmp_path: Path, monkeypatch) -> None:
    def no_links(src, dst):
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(store_schema.os, "link", no_links)
    path = tmp_path / "results.sqlite"
    with ResultStore(path) as store:
        store.add_sweep("s", {"name": "s"}, [])
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == set(store_schema.TABLES)
    assert not [p for p in tmp_path.iterdir() if ".creating" in p.name]
