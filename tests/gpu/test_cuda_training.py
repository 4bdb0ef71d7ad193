"""Training on CUDA: LM steps with AMP off and on, exact resume from a checkpoint, DDP with
one process over nccl (torchrun)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dualsparse import cli
from dualsparse.accounting import ActivityMeter
from dualsparse.apps.lm.evaluate import evaluate_lm
from dualsparse.apps.lm.task import LMTask
from dualsparse.models.lm import RNNLanguageModel
from dualsparse.train.loop import TrainConfig, Trainer, set_seed

V = 24
WORKER = Path(__file__).with_name("ddp_worker_cuda.py")


def stream(n: int, seed: int = 0) -> torch.Tensor:
    """A learnable token stream: a cycle over the vocabulary with 10% noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.arange(n) * 7 % V
    return torch.where(torch.rand(n, generator=g) < 0.1, torch.randint(0, V, (n,), generator=g),
                       base)


def make_trainer(out_dir: Path | None, max_steps: int, stop_at: int | None = None,
                 seed: int = 5) -> Trainer:
    set_seed(seed)
    model = RNNLanguageModel(V, 16, [32, 16], cell="egru", dropouti=0.1, wdrop=0.2,
                             cell_options={"threshold_mean": 0.05}).cuda()
    task = LMTask(stream(3000), stream(400, 1), stream(200, 2), batch_size=4, bptt=10,
                  random_bptt=True, seed=seed, eval_batch_size=4, device="cuda")
    cfg = TrainConfig(max_steps=max_steps, lr=3e-3, clip=0.5, eval_interval=5, log_interval=1,
                      save_interval=2, stop_at=stop_at, seed=seed, tensorboard=False,
                      progress=False, out_dir=None if out_dir is None else str(out_dir))
    return Trainer(model, task, cfg)


@pytest.mark.parametrize("amp", [None, torch.float16, torch.bfloat16],
                         ids=["fp32", "amp-fp16", "amp-bf16"])
def test_lm_training_steps_reduce_the_loss(amp):
    torch.manual_seed(0)
    model = RNNLanguageModel(V, 16, [32, 16], cell="egru",
                             cell_options={"threshold_mean": 0.05}).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    data = stream(20 * 8 * 11).reshape(-1, 8).cuda()
    losses = []
    for step in range(80):
        seg = data[(step % 20) * 11:(step % 20) * 11 + 11]
        with torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(seg[:-1])[0]
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, V),
                                                     seg[1:].reshape(-1))
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5


def test_checkpoint_resume_on_cuda_continues_exactly(tmp_path: Path):
    full = make_trainer(tmp_path / "full", max_steps=10)
    full.fit()
    first = make_trainer(tmp_path / "part", max_steps=10, stop_at=6)
    assert first.fit()["step"] == 6
    second = make_trainer(tmp_path / "part", max_steps=10)
    second.resume(tmp_path / "part")
    assert second.step == 6
    second.fit()
    assert next(second.model.parameters()).is_cuda
    for (name, a), b in zip(full.model.state_dict().items(),
                            second.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available()
                    or not torch.distributed.is_nccl_available(), reason="no nccl")
def test_ddp_one_process_nccl_equals_plain_training(tmp_path: Path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER),
           str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (tmp_path / "ddp-ok").read_text().strip() == "nccl"


@pytest.mark.parametrize("cell", ["egru", "lstm"])
def test_test_report_accounting_on_cuda_equals_cpu(cell: str):
    """The batch-1 test report (evaluate_lm with an ActivityMeter) runs on CUDA and counts
    what the CPU counts (its accumulators and histograms live on the CPU), also with
    deterministic algorithms on, as ``dualsparse train`` runs (CUDA's histc refuses then)."""
    torch.use_deterministic_algorithms(True)  # the conftest restores the setting
    torch.manual_seed(0)
    options = {"threshold_mean": 0.2} if cell == "egru" else {}
    cpu = RNNLanguageModel(40, 12, [24, 16], cell=cell, cell_options=options).double().eval()
    gpu = RNNLanguageModel(40, 12, [24, 16], cell=cell, cell_options=options).double()
    gpu = gpu.cuda().eval()
    gpu.load_state_dict(cpu.state_dict())
    tokens = torch.randint(0, 40, (300,))
    reports = []
    for model, data in ((cpu, tokens), (gpu, tokens.cuda())):
        meter = ActivityMeter(None, decoder=model.decoder)
        res = evaluate_lm(model, data, 1, 25, "full", meter)
        reports.append((res, meter.report().to_dict()))
    (res_c, rep_c), (res_g, rep_g) = reports
    assert res_g["loss"] == pytest.approx(res_c["loss"], rel=1e-9)
    for lay_c, lay_g in zip(rep_c["layers"], rep_g["layers"], strict=True):
        assert lay_g["activity"] == pytest.approx(lay_c["activity"], abs=1e-3)
        assert lay_g["effective_macs"] == pytest.approx(lay_c["effective_macs"], rel=1e-3)


def test_eval_command_on_cuda_equals_cpu(tmp_path: Path):
    """``dualsparse eval --device cuda`` of a run trained on the CPU: the CPU's perplexity."""
    data = Path(os.environ.get("DUALSPARSE_DATA", "/nonexistent")) / "ptb"
    if not data.is_dir():
        pytest.skip("needs DUALSPARSE_DATA with ptb/")
    run = tmp_path / "run"
    assert cli.main(["train", "--cell", "egru", "--train-tokens", "2000", "--valid-tokens",
                     "300", "--test-tokens", "200", "--emsize", "8", "--nhid", "16",
                     "--batch_size", "4", "--bptt", "8", "--max-steps", "4", "--device",
                     "cpu", "--threads", "1", "--no-progress", "--no-tensorboard",
                     "--save", str(run)]) == 0
    results = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.json"
        assert cli.main(["eval", "--checkpoint", str(run), "--device", device,
                         "--out", str(out)]) == 0
        results[device] = json.loads(out.read_text())
    assert results["cuda"]["device"].startswith("cuda")
    assert results["cuda"]["ppl"] == pytest.approx(results["cpu"]["ppl"], rel=1e-4)
