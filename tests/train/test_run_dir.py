"""Run folders: refusing to replace a run, the run lock, and checkpoint files of other
processes left alone; malformed checkpoint JSON gives a CheckpointError naming the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dualsparse.train import checkpoint as ckpt
from dualsparse.train.run_dir import (
    LOCK_NAME,
    RunLock,
    RunLockedError,
    check_output_file,
    clear_run,
    prepare_run_dir,
)


def _save(directory: Path, step: int) -> Path:
    return ckpt.save_checkpoint(directory, "latest", {"w": torch.full((2,), float(step))},
                                {"step": step})


def test_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(tmp_path: Path
                                                                           ) -> None:
    run = tmp_path / "run"
    assert prepare_run_dir(run, resume=False, overwrite=False).is_dir()  # new: fine
    _save(run, 1)
    (run / "metrics.csv").write_text("step\n")
    with pytest.raises(ValueError, match=r"--save .* already holds a run .*--overwrite"):
        prepare_run_dir(run, resume=False, overwrite=False)
    assert prepare_run_dir(run, resume=True, overwrite=False) == run
    assert prepare_run_dir(run, resume=False, overwrite=True) == run
    (run / "notes.txt").write_text("mine")
    (run / "config.json").write_text("{}")  # e.g. the sweep runner's, written before the run
    removed = {p.name for p in clear_run(run)}
    assert "latest.json" in removed and "metrics.csv" in removed
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "notes.txt"]
    assert [p.name for p in clear_run(run, also=("config.json",))] == ["config.json"]
    with pytest.raises(ValueError, match="--resume: --out .* no latest checkpoint"):
        prepare_run_dir(run, resume=True, overwrite=False, flag="--out")


def test_unusable_output_paths_are_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="--save .*file is a file, not a folder"):
        prepare_run_dir(tmp_path / "file", resume=False, overwrite=False)
    with pytest.raises(ValueError, match="--out .*file already exists"):
        check_output_file(tmp_path / "file", "--out")
    assert check_output_file(tmp_path / "file", "--out", overwrite=True)
    with pytest.raises(ValueError, match="--out .* is a folder"):
        check_output_file(tmp_path, "--out")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(ValueError, match="--save .*ro.* is not writable"):
                prepare_run_dir(ro / "run", resume=False, overwrite=False)
        finally:
            ro.chmod(0o700)


def test_lock_refuses_a_second_owner_and_takes_over_a_dead_ones(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        owner = json.loads((tmp_path / LOCK_NAME).read_text())
        assert owner["pid"] == os.getpid()
        with pytest.raises(RunLockedError, match=f"in use by pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = {"pid": int(dead.stdout), "host": RunLock(tmp_path).info["host"]}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    with RunLock(tmp_path) as lock:  # the dead process's lock is stale
        assert lock.held
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(RunLockedError, match="on elsewhere"):  # cannot tell: refused
        RunLock(tmp_path).acquire()


def test_save_checkpoint_deletes_only_its_own_files(tmp_path: Path) -> None:
    other = tmp_path / "latest-00000007-0badf00d.safetensors"  # another process's files
    other.write_bytes(b"not mine")
    tmp = tmp_path / ".latest-00000007-0badf00d.safetensors.abc.tmp"
    tmp.write_bytes(b"half written by someone else")
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    mine = sorted(tmp_path.glob("latest-0000000[12]-*.safetensors"))
    assert len(mine) == 1 and "00000002" in mine[0].name  # its own older file is replaced
    assert other.read_bytes() == b"not mine" and tmp.is_file()


def test_resumed_files_are_adopted_and_replaced(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    first = ckpt.read_checkpoint_meta(tmp_path)["tensors_file"]
    ckpt._OWNED.clear()  # as if a new process resumes the run
    ckpt.adopt_checkpoint_files(tmp_path)
    _save(tmp_path, 2)
    assert not (tmp_path / first).exists()
    assert len(list(tmp_path.glob("latest-*.safetensors"))) == 1


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.pop("step"), "'step' must be an int"),
    (lambda m: m.update(model_config=[1, 2]), "'model_config' must be a JSON object"),
    (lambda m: m.update(tensors_file="../elsewhere.safetensors"), "inside the run folder"),
    (lambda m: m.update(tensors_file="/etc/passwd"), "inside the run folder"),
    (lambda m: m.pop("sha256"), "sha256 missing"),
])
def test_malformed_checkpoint_json_is_named(tmp_path: Path, edit, message: str) -> None:
    pointer = _save(tmp_path, 3)
    meta = json.loads(pointer.read_text())
    edit(meta)
    pointer.write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match=message):
        ckpt.load_checkpoint(tmp_path)


def test_checkpoint_json_that_is_a_list_is_refused(tmp_path: Path) -> None:
    (tmp_path / "latest.json").write_text("[1, 2]")
    with pytest.raises(ckpt.CheckpointError, match="not a dualsparse checkpoint"):
        ckpt.read_checkpoint_meta(tmp_path)
