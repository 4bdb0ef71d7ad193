"""The KWS app: KWSTask on the common Trainer (synthetic data) and `dualsparse train --task kws`
end to end on FSDD (when available): outputs, resume, refusal to overwrite a run."""

import argparse
import csv
import json
import os

import numpy as np
import pytest
import torch

from dualsparse.apps.kws import commands as kws
from dualsparse.apps.kws.task import KWSTask
from dualsparse.models.egru_embedded import KWSNet
from dualsparse.train import checkpoint as ckpt
from dualsparse.train.config import TrainConfig
from dualsparse.train.loop import Trainer, set_seed
from dualsparse.train.task import Task

needs_fsdd = pytest.mark.skipif(
    not os.path.isfile(os.path.join(os.environ.get("DUALSPARSE_DATA", ""), "fsdd", "SHA256SUMS")),
    reason="FSDD not available (set DUALSPARSE_DATA)",
)


def _synthetic(n: int = 60, t: int = 6, f: int = 10):
    """Separable toy clips: the class is the feature channel that is switched on."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (n,), generator=g)
    x = 0.1 * torch.rand(t, n, f, generator=g)
    x[:, torch.arange(n), y] += 0.8
    index = {"train": np.arange(0, 40), "val": np.arange(40, 50), "test": np.arange(50, n)}
    return x, y, index


def _trainer(tmp_path, max_steps: int, stop_at=None, model="gru"):
    set_seed(1)
    x, y, index = _synthetic()
    task = KWSTask(x, y, index, batch_size=16, seed=3)
    net = KWSNet(model, 10, (8,), 10)
    cfg = TrainConfig(max_steps=max_steps, lr=0.01, eval_interval=task.steps_per_epoch,
                      log_interval=1, save_interval=1, stop_at=stop_at, out_dir=str(tmp_path),
                      tensorboard=False, progress=False, select_by="error",
                      scale_lr_by_seq_len=False)
    return Trainer(net, task, cfg)


def test_task_batches_cover_every_clip_once_per_epoch() -> None:
    x, y, index = _synthetic()
    task = KWSTask(x, y, index, batch_size=16, seed=3)
    assert task.steps_per_epoch == 3
    epoch = [task.next_batch() for _ in range(3)]
    assert [len(b) for b in epoch] == [16, 16, 8]
    assert sorted(np.concatenate(epoch).tolist()) == list(range(40))
    assert isinstance(task, Task)
    assert task.next_batch().tolist() != epoch[0].tolist() and task.epoch == 1
    with pytest.raises(ValueError, match="split"):
        task.evaluate(KWSNet("gru", 10, (4,), 10), "train")


def test_task_state_round_trip_repeats_the_batches() -> None:
    x, y, index = _synthetic()
    a = KWSTask(x, y, index, batch_size=16, seed=3)
    for _ in range(4):
        a.next_batch()
    b = KWSTask(x, y, index, batch_size=16, seed=3)
    b.load_state_dict(a.state_dict())
    for _ in range(5):
        assert a.next_batch().tolist() == b.next_batch().tolist()
    with pytest.raises(ValueError, match="settings differ"):
        KWSTask(x, y, index, batch_size=8, seed=3).load_state_dict(a.state_dict())


def test_trainer_learns_and_selects_best_by_validation_error(tmp_path) -> None:
    tr = _trainer(tmp_path, max_steps=30)
    summary = tr.fit()
    errors = {h["step"]: h["valid_error"] for h in summary["history"]}
    assert min(errors.values()) < 0.5  # chance is 0.9
    best = ckpt.read_checkpoint_meta(tmp_path, "best")
    assert best["best_val"] == summary["best_valid_error"] == min(errors.values())
    assert best["step"] == min(errors, key=errors.get)  # the first step with the lowest error
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    valid = [r for r in rows if r["split"] == "valid"]
    assert len(valid) == len(errors) and all(r["accuracy"] for r in valid)
    assert float(valid[-1]["accuracy"]) == pytest.approx(1 - errors[30], abs=1e-5)


def test_stopped_run_resumes_bitwise(tmp_path) -> None:
    full = _trainer(tmp_path / "full", max_steps=12)
    full.fit()
    part = _trainer(tmp_path / "part", max_steps=12, stop_at=5)
    part.fit()
    again = _trainer(tmp_path / "part", max_steps=12)
    again.resume(tmp_path / "part")
    assert again.step == 5
    again.fit()
    for (k, a), b in zip(full.model.state_dict().items(), again.model.state_dict().values(),
                         strict=True):
        assert torch.equal(a, b), k
    with open(tmp_path / "full" / "metrics.csv") as f1, \
            open(tmp_path / "part" / "metrics.csv") as f2:
        assert [r["loss"] for r in csv.DictReader(f1)] == [r["loss"] for r in csv.DictReader(f2)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("kws_cache")


def _args(*argv):
    p = argparse.ArgumentParser()
    kws.add_arguments(p)
    return p.parse_args(list(argv))


@needs_fsdd
@pytest.mark.parametrize("model", ["gru", "egru-q"])
def test_tiny_run(model, tmp_path, monkeypatch, cache):
    monkeypatch.setenv("DUALSPARSE_CACHE", str(cache))
    out = tmp_path / "o"
    argv = ["--model", model, "--epochs", "2", "--max-train", "32", "--hidden", "8",
            "--split", "speaker", "--threads", "1", "--batch-size", "16", "--no-progress",
            "--out", str(out)]
    m = kws.run(_args(*argv))
    assert 0 <= m["test_acc"] <= 1 and m["n_test"] == 1000 and m["weights"] == "best"
    assert m["best_epoch"] in (1, 2) and len(m["history"]) == 2
    assert json.loads((out / "metrics.json").read_text())["model"] == model
    assert ckpt.read_checkpoint_meta(out, "latest")["step"] == 4  # 2 epochs of 2 batches
    assert not list(out.glob("*.pt"))
    if model == "egru-q":
        assert m["deployed_agreement"] >= 0.9 and m["deployed_bytes"] < m["float_bytes"]
        assert (out / "c" / "egru.c").is_file()
    with pytest.raises(ValueError, match="already holds a run"):
        kws.run(_args(*argv))
    with pytest.raises(ValueError, match="other settings.*hidden"):
        kws.run(_args(*argv[:-2], "--hidden", "6", "--out", str(out), "--resume"))
    again = kws.run(_args(*argv, "--resume"))  # finished: nothing to train, same result
    assert again["test_acc"] == m["test_acc"] and again["best_epoch"] == m["best_epoch"]
