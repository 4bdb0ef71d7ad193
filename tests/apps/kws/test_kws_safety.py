"""``train --task kws`` refuses what would report an untrained model or replace a run, before
the data set is read."""

from __future__ import annotations

import json
from pathlib import Path

from dualsparse import cli
from dualsparse.train.run_dir import LOCK_NAME


def test_zero_epochs_are_refused(capsys) -> None:
    assert cli.main(["train", "--task", "kws", "--epochs", "0"]) == 1
    assert "--epochs must be an int >= 1, got 0" in capsys.readouterr().err


def test_run_folders_are_checked_before_the_data(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("DUALSPARSE_DATA", str(tmp_path / "no-data"))  # never reached
    run = tmp_path / "run"
    run.mkdir()
    (run / "latest.json").write_text("{}")
    assert cli.main(["train", "--task", "kws", "--out", str(run)]) == 1
    assert "--out" in (err := capsys.readouterr().err) and "already holds a run" in err
    assert cli.main(["train", "--task", "kws", "--out", str(tmp_path / "new"), "--resume"]) == 1
    assert "no latest checkpoint" in capsys.readouterr().err
    assert cli.main(["train", "--task", "kws", "--out", str(run), "--resume",
                     "--overwrite"]) == 1
    assert "exclude each other" in capsys.readouterr().err
    (run / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    assert cli.main(["train", "--task", "kws", "--out", str(run), "--overwrite"]) == 1
    assert "in use by pid 1 on elsewhere" in capsys.readouterr().err
    assert (run / "latest.json").read_text() == "{}"  # --overwrite waits for the lock


def test_bad_dense_widths_are_refused_before_the_data(tmp_path: Path, monkeypatch,
                                                      capsys) -> None:
    monkeypatch.setenv("DUALSPARSE_DATA", str(tmp_path / "no-data"))  # never reached
    for value in ("0", "a"):
        assert cli.main(["train", "--task", "kws", "--dense", value]) == 1
        assert f"--dense must be comma-separated ints >= 1, got '{value}'" in \
            capsys.readouterr().err
