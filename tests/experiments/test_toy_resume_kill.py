"""A toy sweep whose worker is killed with SIGKILL mid-run, then run again: the run resumes
from its ``latest`` checkpoint and ends bitwise where an uninterrupted run ends."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from dualsparse.experiments.runner import WorkerOptions, work
from dualsparse.experiments.spec import load_spec
from dualsparse.experiments.store import ResultStore

BASE = {"emsize": 8, "nhid": 12, "steps": 240, "train_tokens": 3000, "test_tokens": 200,
        "bptt": 10, "batch_size": 8, "prune_target": 0.6, "prune_steps": 3,
        "save_interval": 1, "log_interval": 1}


def _spec(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "run": "toy", "output": str(tmp_path / name),
                                    "base": BASE, "grid": {"model": ["EGRU"]}, "seeds": [3]}))
    return path


def _run_dir(output: Path) -> Path:
    (run,) = (output / "runs").iterdir()
    return run


def _train_losses(run: Path) -> list[str]:
    with open(run / "metrics.csv") as f:
        return [r["loss"] for r in csv.DictReader(f) if r["split"] == "train"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    meta = json.loads((run / "latest.json").read_text())
    return load_file(str(run / meta["tensors_file"]))


def test_killed_toy_worker_resumes_bitwise(tmp_path: Path) -> None:
    full_spec, part_spec = load_spec(_spec(tmp_path, "full")), load_spec(_spec(tmp_path, "part"))
    with ResultStore(full_spec.store_path) as store:
        store.add_sweep(full_spec.name, full_spec.to_dict(), full_spec.expand())
    assert work(full_spec.store_path, full_spec.output, WorkerOptions(verbose=False))["done"] == 1

    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "dualsparse.experiments", "sweep", "run",
                             str(tmp_path / "part.yaml"), "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    killed_after = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            step = json.loads((_run_dir(tmp_path / "part") / "latest.json").read_text())["step"]
        except (OSError, ValueError, KeyError):
            step = 0
        if step >= 40:
            proc.send_signal(signal.SIGKILL)
            killed_after = step
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed_after is not None and proc.returncode == -signal.SIGKILL, \
        "the worker finished before it could be killed"
    assert killed_after < BASE["steps"]

    # the killed worker's pid is gone: a new worker takes the run over and resumes it
    assert work(part_spec.store_path, part_spec.output, WorkerOptions(verbose=False))["done"] == 1
    full, part = _run_dir(tmp_path / "full"), _run_dir(tmp_path / "part")
    assert full.name == part.name  # same config, same run id
    assert _train_losses(part) == _train_losses(full)
    assert len(_train_losses(full)) == BASE["steps"]
    a, b = _weights(full), _weights(part)
    assert a.keys() == b.keys() and any(k.endswith("_mask") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with ResultStore(full_spec.store_path) as s1, ResultStore(part_spec.store_path) as s2:
        (m1,), (m2,) = [r.metrics for r in s1.records()], [r.metrics for r in s2.records()]
    m1.pop("checkpoint"), m2.pop("checkpoint")
    assert m1 == m2
    assert m1["weight_sparsity"] > 0.55
