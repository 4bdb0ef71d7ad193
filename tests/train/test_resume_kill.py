"""``dualsparse train`` killed with SIGKILL mid-run, then ``--resume``: the loss curve and the
final weights equal those of an uninterrupted run."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dualsparse.cli import main

DATA = os.environ.get("DUALSPARSE_DATA")
needs_ptb = pytest.mark.skipif(
    not DATA or not (Path(DATA) / "ptb" / "train.txt").is_file(),
    reason="PTB not available under $DUALSPARSE_DATA")

ARGS = ["train", "--data", "ptb", "--train-tokens", "6000", "--valid-tokens", "600",
        "--test-tokens", "300", "--emsize", "16", "--nhid", "24,16", "--batch_size", "4",
        "--bptt", "12", "--random-bptt", "--max-steps", "14", "--eval-interval", "5",
        "--save-interval", "1", "--log-interval", "1", "--lr", "0.003", "--beta1", "0",
        "--dropouti", "0.2", "--wdrop", "0.2", "--schedule", "cosine", "--threads", "1",
        "--no-progress", "--no-tensorboard"]


def _cmd(save: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dualsparse", *ARGS, "--save", str(save), *extra]


def _train_losses(run: Path) -> list[str]:
    with open(run / "metrics.csv") as f:
        return [r["loss"] for r in csv.DictReader(f) if r["split"] == "train"]


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    meta = json.loads((run / "latest.json").read_text())
    return load_file(str(run / meta["tensors_file"]))


@needs_ptb
def test_sigkill_then_resume_continues_the_loss_curve(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    full = tmp_path / "full"
    assert main([*ARGS, "--save", str(full)]) == 0  # in-process: saves one interpreter start

    part = tmp_path / "part"
    proc = subprocess.Popen(_cmd(part), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    killed_after = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            step = json.loads((part / "latest.json").read_text())["step"]
        except (OSError, ValueError, KeyError):
            step = 0
        if step >= 6:
            proc.send_signal(signal.SIGKILL)
            killed_after = step
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed_after is not None and proc.returncode == -signal.SIGKILL, \
        "the run finished before it could be killed"
    assert main([*ARGS, "--save", str(part), "--resume"]) == 0

    assert _train_losses(part) == _train_losses(full)
    a, b = _final_weights(full), _final_weights(part)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    results = json.loads((part / "results.json").read_text())
    assert results["train"]["step"] == 14 and results["test"]["tokens"] == 299
