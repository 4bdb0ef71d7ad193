"""torchrun with 2 CPU processes (gloo): DDP training leaves identical weights on both ranks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

DATA = os.environ.get("DUALSPARSE_DATA")
WORKER = Path(__file__).with_name("ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not DATA or not (Path(DATA) / "ptb" / "train.txt").is_file(),
                    reason="PTB not available under $DUALSPARSE_DATA")
@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_two_process_ddp_ranks_end_with_identical_weights(tmp_path: Path) -> None:
    flags = ["--train-tokens", "4000", "--valid-tokens", "300", "--test-tokens", "100",
             "--emsize", "16", "--nhid", "24,16", "--batch_size", "3", "--bptt", "8",
             "--random-bptt", "--dropouti", "0.3", "--wdrop", "0.3", "--max-steps", "5",
             "--eval-interval", "0", "--lr", "0.01", "--threads", "1", "--no-progress",
             "--no-tensorboard", "--save", str(tmp_path / "run")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER),
           str(tmp_path), "--", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    r0 = load_file(str(tmp_path / "rank0-final.safetensors"))
    r1 = load_file(str(tmp_path / "rank1-final.safetensors"))
    init = load_file(str(tmp_path / "rank0-initial.safetensors"))
    assert r0.keys() == r1.keys() == init.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    changed = [k for k in r0 if not torch.equal(r0[k], init[k])]
    assert "embedding.weight" in changed and any("weight_hh" in k for k in changed)
    assert (tmp_path / "run" / "latest.json").is_file()  # rank 0 wrote the checkpoint


@pytest.mark.parametrize(("device", "world", "local", "expected"), [
    ("cuda:1", 1, 0, 1),   # one process: the index the user named
    ("cuda", 1, 0, 0),
    (None, 1, 0, 0),       # CUDA when available: GPU 0
    ("cuda:1", 2, 0, 0),   # torchrun: the GPU of LOCAL_RANK
    ("cuda", 2, 1, 1),
])
def test_the_cuda_device_follows_the_index_or_the_local_rank(monkeypatch, device, world, local,
                                                            expected):
    from dualsparse.train import distributed

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)  # join nothing
    for name, value in (("WORLD_SIZE", world), ("RANK", local), ("LOCAL_RANK", local)):
        monkeypatch.setenv(name, str(value))
    info = distributed.init_distributed(device)
    assert chosen == [expected] and info.device == torch.device("cuda", expected)
