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
from dualsparse.apps.kws import m0_report, table
from dualsparse.apps.kws.task import KWSTask
from dualsparse.data.augment import FeatureAugment
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


def _trainer(tmp_path, max_steps: int, stop_at=None, model="gru", augment=None):
    set_seed(1)
    x, y, index = _synthetic()
    task = KWSTask(x, y, index, batch_size=16, seed=3, augment=augment)
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


def test_augmentation_changes_training_batches_only() -> None:
    x, y, index = _synthetic()
    plain = KWSTask(x, y, index, batch_size=16, seed=3)
    aug = KWSTask(x, y, index, batch_size=16, seed=3, augment=FeatureAugment(warp=0.3))
    off = KWSTask(x, y, index, batch_size=16, seed=3, augment=FeatureAugment())
    net = KWSNet("gru", 10, (8,), 10)
    batch = plain.next_batch()
    assert aug.next_batch().tolist() == batch.tolist()   # same order: its own generator
    loss_plain = plain.training_loss(net, batch)[0]
    assert off.training_loss(net, batch)[0] == loss_plain
    assert aug.training_loss(net, batch)[0] != loss_plain
    assert aug.evaluate(net, "test") == plain.evaluate(net, "test")
    with pytest.raises(ValueError, match="settings differ"):
        plain.load_state_dict(aug.state_dict())
    with pytest.raises(ValueError, match="settings differ"):
        KWSTask(x, y, index, batch_size=16, seed=3,
                augment=FeatureAugment(warp=0.1)).load_state_dict(aug.state_dict())
    plain.load_state_dict(off.state_dict())  # no augmentation = the settings of old checkpoints


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


@pytest.mark.parametrize("augment", [None, FeatureAugment(warp=0.2, time_mask=2)])
def test_stopped_run_resumes_bitwise(tmp_path, augment) -> None:
    full = _trainer(tmp_path / "full", max_steps=12, augment=augment)
    full.fit()
    part = _trainer(tmp_path / "part", max_steps=12, stop_at=5, augment=augment)
    part.fit()
    again = _trainer(tmp_path / "part", max_steps=12, augment=augment)
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


@needs_fsdd
def test_table_mode_writes_one_json_per_run_and_never_overwrites(tmp_path, monkeypatch, cache):
    monkeypatch.setenv("DUALSPARSE_CACHE", str(cache))
    res = tmp_path / "results"
    argv = ["--seeds", "0,1", "--splits", "random", "--models", "gru,egru-q", "--epochs", "1",
            "--max-train", "32", "--hidden", "6", "--threads", "1", "--batch-size", "16",
            "--no-progress", "--out", str(tmp_path / "runs"), "--results", str(res),
            "--model-lr", "egru-q=0.02", "--aug-stretch", "0.1"]
    summary = kws.run(_args(*argv))
    files = sorted(p.name for p in res.glob("*_s*.json"))
    assert files == ["egru-q_random_s0.json", "egru-q_random_s1.json", "gru_random_s0.json",
                     "gru_random_s1.json"]
    r = json.loads((res / "egru-q_random_s1.json").read_text())
    assert r["seed"] == 1 and r["split"] == "random" and r["n_test"] == 300
    assert r["settings"]["lr"] == 0.02 and r["settings"]["aug_stretch"] == 0.1
    assert r["accuracy"] == r["deployed_test_acc"] and r["deployed_bytes"] < r["float_bytes"]
    fr = r["deployed_level_fractions"]
    assert set(fr) <= {"-1", "-0.5", "-0.25", "0", "0.25", "0.5", "1"}
    assert sum(fr.values()) == pytest.approx(1.0)
    g = json.loads((res / "gru_random_s0.json").read_text())
    assert g["accuracy"] == g["test_acc"] and "deployed_test_acc" not in g
    assert g["settings"]["lr"] == 3e-3
    rows = {(row["model"], row["split"]): row for row in summary["rows"]}
    accs = [json.loads((res / f"gru_random_s{s}.json").read_text())["accuracy"] for s in (0, 1)]
    assert rows["gru", "random"]["n"] == 2 and rows["gru", "random"]["seeds"] == [0, 1]
    assert rows["gru", "random"]["mean"] == pytest.approx(np.mean(accs))
    assert rows["gru", "random"]["std"] == pytest.approx(np.std(accs, ddof=1))
    assert (res / "summary.md").read_text().count("| gru | random | 0,1 |") == 1
    gap = summary["gaps"][0]
    assert gap["split"] == "random" and gap["seeds"] == [0, 1]
    assert gap["gru_minus_egru_q"] == pytest.approx(
        rows["gru", "random"]["mean"] - rows["egru-q", "random"]["mean"])
    # a second call trains nothing and leaves every results file as it was
    (res / "gru_random_s0.json").write_text(json.dumps({**g, "marker": 1}))
    before = {p.name: p.read_bytes() for p in res.glob("*_s*.json")}
    kws.run(_args(*argv))
    assert {p.name: p.read_bytes() for p in res.glob("*_s*.json")} == before


def test_table_mode_flag_errors(tmp_path):
    with pytest.raises(ValueError, match="--seeds"):
        kws.run(_args("--seeds", "0,x", "--out", str(tmp_path), "--results", str(tmp_path)))
    with pytest.raises(ValueError, match="--splits"):
        kws.run(_args("--splits", "random,heldout", "--out", str(tmp_path),
                      "--results", str(tmp_path)))
    with pytest.raises(ValueError, match="--results"):
        kws.run(_args("--seeds", "0,1", "--out", str(tmp_path)))
    with pytest.raises(ValueError, match="--model-lr"):
        kws.run(_args("--seeds", "0", "--model-lr", "egru-q:0.1", "--out", str(tmp_path),
                      "--results", str(tmp_path)))
    with pytest.raises(ValueError, match="--seeds repeats"):
        kws.run(_args("--seeds", "1,1", "--out", str(tmp_path), "--results", str(tmp_path)))


def test_front_end_and_logit_gain_flags_are_checked(tmp_path):
    with pytest.raises(ValueError, match="--gain"):
        kws.run(_args("--gain", "0", "--out", str(tmp_path / "a")))
    with pytest.raises(ValueError, match="--logit-gain"):
        kws.run(_args("--logit-gain", "-1", "--out", str(tmp_path / "b")))
    with pytest.raises(ValueError, match="--aug-warp"):
        kws.run(_args("--aug-warp", "0.7", "--out", str(tmp_path / "c")))
    with pytest.raises(ValueError, match="--aug-time-mask"):
        kws.run(_args("--aug-time-mask", "-2", "--out", str(tmp_path / "d")))
    with pytest.raises(ValueError, match="--aug-freq-mask 65"):
        kws.run(_args("--aug-freq-mask", "65", "--data", str(tmp_path / "no-data")))


def _drop_dense(run) -> None:
    """Make ``run`` look like one saved before --dense and --aug-* existed."""
    for name in ("config.json", "latest.json", "best.json"):
        path = run / name
        data = json.loads(path.read_text())
        cfg = data["run_config"] if name != "config.json" else data
        assert cfg.pop("dense") == ""
        for k in kws.AUGMENT_FLAGS:
            assert cfg.pop(k) == 0
        path.write_text(json.dumps(data))


@needs_fsdd
def test_dense_flag_tiny_run_records_and_deploys_the_layer(tmp_path, monkeypatch, cache):
    monkeypatch.setenv("DUALSPARSE_CACHE", str(cache))
    out = tmp_path / "d"
    argv = ["--model", "egru-q", "--epochs", "1", "--max-train", "32", "--hidden", "6",
            "--dense", "4", "--threads", "1", "--batch-size", "16", "--no-progress",
            "--out", str(out)]
    m = kws.run(_args(*argv))
    assert m["dense"] == [4] and m["hidden"] == [6]
    assert json.loads((out / "config.json").read_text())["dense"] == "4"
    assert ckpt.read_checkpoint_meta(out, "best")["run_config"]["dense"] == "4"
    # params: eGRU 6 (2*6 rows of 64+6, two bias vectors), dense 4x6+4, readout 10x4+10
    assert m["params"] == 12 * 70 + 2 * 12 + 28 + 50
    assert "egru_dense_w0" in (out / "c" / "egru_weights.h").read_text()
    cfg, net = m0_report.load_run(out)
    assert net.dense_sizes == [4] and cfg["dense"] == "4"
    assert sum(m["deployed_level_fractions"].values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="other settings.*dense"):
        kws.run(_args(*argv[:-2], "--dense", "5", "--out", str(out), "--resume"))


@needs_fsdd
def test_runs_saved_before_the_dense_flag_load_and_resume(tmp_path, monkeypatch, cache):
    monkeypatch.setenv("DUALSPARSE_CACHE", str(cache))
    out = tmp_path / "old"
    argv = ["--model", "gru", "--epochs", "1", "--max-train", "32", "--hidden", "6",
            "--threads", "1", "--batch-size", "16", "--no-progress", "--out", str(out)]
    m = kws.run(_args(*argv))
    assert m["dense"] == []
    _drop_dense(out)
    _, net = m0_report.load_run(out)
    assert net.dense_sizes == [] and len(net.dense) == 0
    again = kws.run(_args(*argv, "--resume"))  # an old run resumes as a run without --dense
    assert again["test_acc"] == m["test_acc"] and again["dense"] == []
    with pytest.raises(ValueError, match="other settings.*dense"):
        kws.run(_args(*argv, "--resume", "--dense", "4"))
    with pytest.raises(ValueError, match="other settings.*aug_warp"):
        kws.run(_args(*argv, "--resume", "--aug-warp", "0.1"))


@needs_fsdd
def test_table_mode_records_dense_and_refuses_other_widths(tmp_path, monkeypatch, cache):
    monkeypatch.setenv("DUALSPARSE_CACHE", str(cache))
    argv = ["--seeds", "0", "--splits", "random", "--models", "gru", "--epochs", "1",
            "--max-train", "32", "--hidden", "6", "--threads", "1", "--batch-size", "16",
            "--no-progress", "--out", str(tmp_path / "runs")]
    kws.run(_args(*argv, "--dense", "3", "--results", str(tmp_path / "r1")))
    r = json.loads((tmp_path / "r1" / "gru_random_s0.json").read_text())
    assert r["dense"] == [3] and r["hidden"] == [6]
    # the finished run folder has a dense layer of 3: not reused for another width
    with pytest.raises(ValueError, match="--hidden/--dense"):
        kws.run(_args(*argv, "--results", str(tmp_path / "r2")))
    assert not (tmp_path / "r2" / "gru_random_s0.json").exists()


@pytest.mark.parametrize("value", ["0", "a", "16,-1", "4,,x"])
def test_bad_dense_flag_names_the_flag(value, tmp_path):
    with pytest.raises(ValueError, match="--dense must be comma-separated ints >= 1"):
        kws.run(_args("--dense", value, "--out", str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def _drop_key(run, key: str) -> None:
    """Make ``run`` look like one saved before the setting ``key`` existed."""
    for name in ("config.json", "latest.json", "best.json"):
        path = run / name
        data = json.loads(path.read_text())
        cfg = data["run_config"] if name != "config.json" else data
        cfg.pop(key)
        path.write_text(json.dumps(data))


@needs_fsdd
def test_dense_shift_is_recorded_and_runs_saved_without_it_load_unshifted(tmp_path, monkeypatch,
                                                                         cache):
    monkeypatch.setenv("DUALSPARSE_CACHE", str(cache))
    out = tmp_path / "s"
    argv = ["--model", "egru-q", "--epochs", "1", "--max-train", "32", "--hidden", "6",
            "--dense", "4", "--threads", "1", "--batch-size", "16", "--no-progress",
            "--out", str(out)]
    m = kws.run(_args(*argv))  # default auto: ceil(log2(6)) = 3, recorded resolved
    assert m["dense_shift"] == [3]
    assert json.loads((out / "config.json").read_text())["dense_shift"] == "3"
    assert ckpt.read_checkpoint_meta(out, "best")["run_config"]["dense_shift"] == "3"
    assert ", 3, egru_dense_w0" in (out / "c" / "egru.c").read_text()
    cfg, net = m0_report.load_run(out)
    assert net.dense_shifts == [3]
    again = kws.run(_args(*argv, "--resume", "--dense-shift", "3"))  # "3" is what auto gave
    assert again["test_acc"] == m["test_acc"]
    _drop_key(out, "dense_shift")  # a run saved before the flag: the unshifted layer
    _, old = m0_report.load_run(out)
    assert old.dense_shifts == [0]
    with pytest.raises(ValueError, match="other settings.*dense_shift"):
        kws.run(_args(*argv, "--resume"))
    assert kws.run(_args(*argv, "--resume", "--dense-shift", "0"))["dense_shift"] == [0]


@pytest.mark.parametrize("model,dense,value", [("egru-q", "4", "x"), ("egru-q", "4", "1,2"),
                                               ("egru-q", "4", "-1"), ("egru-q", "4", "31"),
                                               ("gru", "4", "2"), ("egru-q", "", "1")])
def test_bad_dense_shift_flag_names_the_flag(model, dense, value, tmp_path):
    with pytest.raises(ValueError, match="--dense-shift"):
        kws.run(_args("--model", model, "--dense", dense, "--dense-shift", value,
                      "--out", str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_dense_shift_auto_follows_the_fan_ins():
    parse = table.parse_dense_shift
    assert parse("auto", "egru-q", (30, 20), ()) == ()
    assert parse("auto", "egru-q", (30, 20), (16,)) == (5,)
    assert parse("auto", "egru-q", (8,), (16, 9)) == (3, 4)
    assert parse("auto", "gru", (30, 20), (16,)) == (0,)
    assert parse(None, "egru-q", (30, 20), (16, 9)) == (0, 0)  # saved before the flag
    assert parse("2,0", "egru-q", (30, 20), (16, 9)) == (2, 0)
