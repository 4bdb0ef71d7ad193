"""Trainer: parameter groups, schedules, LR scaling, pruner hooks, exact resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dualsparse.apps.lm.task import LMTask
from dualsparse.models.lm import RNNLanguageModel
from dualsparse.train import checkpoint as ckpt
from dualsparse.train.config import TrainConfig
from dualsparse.train.loop import Trainer, set_seed
from dualsparse.train.optim import build_optimizer, lr_factor, parameter_groups

V = 24


def synthetic_stream(n: int, seed: int = 0) -> torch.Tensor:
    """A learnable stream: a fixed cycle over the vocabulary with 10% random tokens."""
    g = torch.Generator().manual_seed(seed)
    base = torch.arange(n) * 7 % V
    noise = torch.randint(0, V, (n,), generator=g)
    return torch.where(torch.rand(n, generator=g) < 0.1, noise, base)


def make(cell: str = "egru", *, random_bptt: bool = True, out_dir: Path | None = None,
         max_steps: int = 12, stop_at: int | None = None, seed: int = 5, n_train: int = 3000,
         **cfg_kw):
    set_seed(seed)
    model = RNNLanguageModel(V, 8, [12, 8], cell=cell, dropout=0.1, dropouth=0.1,
                             dropouti=0.1, dropoute=0.05, wdrop=0.2,
                             cell_options={"threshold_mean": 0.05} if cell == "egru" else None)
    task = LMTask(synthetic_stream(n_train), synthetic_stream(400, 1), synthetic_stream(200, 2),
                  batch_size=4, bptt=10, random_bptt=random_bptt, seed=seed,
                  eval_batch_size=4, test_batch_size=1)
    settings = {"eval_interval": 5, "log_interval": 1, "save_interval": 2, **cfg_kw}
    settings.setdefault("lr", 3e-3)
    cfg = TrainConfig(max_steps=max_steps, beta1=0.0, clip=0.5, schedule="cosine",
                      cosine_start=4, stop_at=stop_at,
                      out_dir=None if out_dir is None else str(out_dir), tensorboard=False,
                      progress=False, seed=seed, **settings)
    return Trainer(model, task, cfg)


def test_adamw_is_fused_on_cpu_and_steps_like_the_foreach_adamw() -> None:
    """The fused AdamW the Trainer builds makes the update of torch's foreach AdamW with the
    same groups (to float rounding), decays each group by its own rate, and SGD is unchanged."""
    torch.manual_seed(0)
    model = RNNLanguageModel(V, 8, [12, 8], cell="egru")
    twin = RNNLanguageModel(V, 8, [12, 8], cell="egru")
    twin.load_state_dict(model.state_dict())
    cfg = TrainConfig(max_steps=1, lr=0.01, wdecay=0.1, wdecay_bias=0.0, wdecay_thr=0.5,
                      beta1=0.0)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"]
    ref = torch.optim.AdamW(parameter_groups(twin, cfg), lr=cfg.lr, betas=(0.0, cfg.beta2),
                            eps=cfg.eps, foreach=True)
    for step in range(3):
        for m, o in ((model, opt), (twin, ref)):
            o.zero_grad()
            tokens = torch.randint(0, V, (5, 2), generator=torch.Generator().manual_seed(step))
            logits, _ = m(tokens)
            logits.square().mean().backward()
            o.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
    sgd = build_optimizer(model, TrainConfig(max_steps=1, optimizer="sgd"))
    assert isinstance(sgd, torch.optim.SGD) and not sgd.defaults.get("fused")


def test_parameter_groups_split_weights_biases_thresholds() -> None:
    model = RNNLanguageModel(V, 8, [12, 8], cell="egru")
    cfg = TrainConfig(max_steps=1, lr=0.01, wdecay=0.1, wdecay_bias=0.0, wdecay_thr=0.5,
                      lr_thr=0.0, lr_bias=2.0)
    groups = {g["name"]: g for g in parameter_groups(model, cfg)}
    assert set(groups) == {"weights", "biases", "thresholds"}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in groups["thresholds"]["params"]} == {
        "rnns.0.threshold_raw_l0", "rnns.1.threshold_raw_l0"}
    assert "embedding.weight" in {names[id(p)] for p in groups["weights"]["params"]}
    assert "decoder.bias" in {names[id(p)] for p in groups["biases"]["params"]}
    assert (groups["weights"]["weight_decay"], groups["thresholds"]["weight_decay"]) == (0.1, 0.5)
    assert groups["thresholds"]["lr"] == 0.0 and groups["biases"]["lr"] == pytest.approx(0.02)
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(model.parameters()))  # tied weight once
    lstm = RNNLanguageModel(V, 8, [8], cell="lstm")
    assert {g["name"] for g in parameter_groups(lstm, cfg)} == {"weights", "biases"}


def test_lr_schedules() -> None:
    cos = TrainConfig(max_steps=110, schedule="cosine", cosine_start=10, min_lr_ratio=0.1)
    assert lr_factor(0, cos) == lr_factor(9, cos) == 1.0
    assert lr_factor(60, cos) == pytest.approx(0.55)
    assert lr_factor(110, cos) == pytest.approx(0.1)
    step = TrainConfig(max_steps=100, schedule="step", when=(10, 20), gamma=0.5)
    assert [lr_factor(s, step) for s in (9, 10, 19, 20, 99)] == [1, 0.5, 0.5, 0.25, 0.25]
    warm = TrainConfig(max_steps=100, warmup_steps=4)
    assert [lr_factor(s, warm) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(max_steps=1, schedule="linear")
    with pytest.raises(ValueError, match="beta1"):
        TrainConfig(max_steps=1, beta1=1.0)
    with pytest.raises(ValueError, match="lr must be"):
        TrainConfig(max_steps=1, lr=math.nan)


def test_lr_is_scaled_by_segment_length_with_random_bptt() -> None:
    tr = make(random_bptt=True, eval_interval=0)
    lengths = []
    for _ in range(6):
        before = tr.task.iterator.index
        out = tr.train_step()
        seg_len = tr.task.iterator.bounds[before][1]
        lengths.append(seg_len)
        assert out["lr"] == pytest.approx(3e-3 * seg_len / 10 * lr_factor(tr.step - 1, tr.cfg))
        thr = next(g for g in tr.optimizer.param_groups if g["name"] == "thresholds")
        assert thr["lr"] == pytest.approx(out["lr"])
    assert len(set(lengths)) > 1
    fixed = make(random_bptt=False)
    assert fixed.train_step()["lr"] == pytest.approx(3e-3)


def test_training_reduces_the_loss() -> None:
    tr = make("lstm", random_bptt=False, max_steps=60, lr=0.02)
    tr.cfg.eval_interval = 0
    first = tr.task.evaluate(tr.model, "valid")["loss"]
    tr.fit()
    assert tr.task.evaluate(tr.model, "valid")["loss"] < first - 0.3


class RecordingPruner:
    """Stands in for dualsparse.sparsity's Pruner and records the calls the Trainer makes."""

    def __init__(self) -> None:
        self.calls: list = []
        self.optimizer = None

    def attach_optimizer(self, optimizer) -> None:
        self.calls.append("attach")
        self.optimizer = optimizer

    def penalty(self):
        self.calls.append("penalty")
        return torch.tensor(0.0)

    def step(self, global_step: int) -> None:
        self.calls.append(("step", global_step))

    def state_dict(self) -> dict:
        return {"steps": [c[1] for c in self.calls if isinstance(c, tuple)]}

    def load_state_dict(self, d: dict) -> None:
        self.calls.append(("loaded", tuple(d["steps"])))


def test_pruner_hooks_are_called_in_order_and_state_is_checkpointed(tmp_path: Path) -> None:
    tr = make(out_dir=tmp_path, max_steps=3)
    pruner = RecordingPruner()
    tr = Trainer(tr.model, tr.task, tr.cfg, pruner=pruner)
    assert pruner.calls == ["attach"] and pruner.optimizer is tr.optimizer
    tr.fit()
    assert pruner.calls[1:] == ["penalty", ("step", 0), "penalty", ("step", 1), "penalty",
                                ("step", 2)]
    _, meta = ckpt.load_checkpoint(tmp_path, "latest")
    assert meta["pruner"] == {"steps": [0, 1, 2]}
    again = make(out_dir=tmp_path, max_steps=3)
    p2 = RecordingPruner()
    Trainer(again.model, again.task, again.cfg, pruner=p2).resume(tmp_path)
    assert p2.calls == ["attach", ("loaded", (0, 1, 2))]


def _losses(tr: Trainer) -> list[float]:
    out = []
    while tr.step < min(tr.cfg.max_steps, tr.cfg.stop_at or tr.cfg.max_steps):
        out.append(tr.train_step()["loss"])
    return out


@pytest.mark.parametrize("cell,n_train", [("egru", 3000), ("lstm", 300)])
def test_resume_continues_bitwise(tmp_path: Path, cell: str, n_train: int) -> None:
    """Stop at step 7 and resume; with 300 tokens the run also crosses epoch boundaries."""
    full = make(cell, out_dir=tmp_path / "full", max_steps=12, n_train=n_train)
    full.fit()
    reference = _csv_losses(tmp_path / "full")
    first = make(cell, out_dir=tmp_path / "part", max_steps=12, stop_at=7, n_train=n_train)
    summary = first.fit()
    assert summary["step"] == 7 and not summary["finished"]
    second = make(cell, out_dir=tmp_path / "part", max_steps=12, n_train=n_train)
    torch.manual_seed(12345)  # the checkpoint's RNG state must replace this
    second.resume(tmp_path / "part")
    assert second.step == 7
    second.fit()
    assert _csv_losses(tmp_path / "part") == reference  # no duplicate or missing rows
    if n_train == 300:
        assert second.task.epoch >= 1
    for (n, a), b in zip(full.model.state_dict().items(), second.model.state_dict().values(),
                         strict=True):
        assert torch.equal(a, b), n


def _csv_losses(run: Path) -> list[str]:
    import csv
    with open(run / "metrics.csv") as f:
        return [r["loss"] for r in csv.DictReader(f) if r["split"] == "train"]


def test_best_checkpoint_tracks_validation(tmp_path: Path) -> None:
    tr = make("gru", out_dir=tmp_path, max_steps=10, random_bptt=False)
    tr.fit()
    best = ckpt.read_checkpoint_meta(tmp_path, "best")
    vals = {h["step"]: h["valid_loss"] for h in tr.history}
    assert set(vals) == {5, 10}
    assert best["step"] == min(vals, key=vals.get)
    assert best["best_val"] == pytest.approx(min(vals.values()))


def test_best_checkpoint_waits_for_the_pruning_schedule(tmp_path: Path) -> None:
    from dualsparse.sparsity import Pruner
    from dualsparse.sparsity.schedules import IterativeSchedule

    tr = make("gru", out_dir=tmp_path, max_steps=15, random_bptt=False)
    spec = {"tensors": ["*weight_hh_l*", "*weight_ih_l*"], "sparsity": 0.9}
    pruner = Pruner(tr.model, spec, schedule=IterativeSchedule(2, 3, 8))
    tr = Trainer(tr.model, tr.task, tr.cfg, pruner=pruner)
    eligible = []
    for step in (5, 8, 9, 15):  # the last mask update is computed at step 8
        tr.step = step
        eligible.append(tr._best_eligible())
    assert eligible == [False, False, True, True]
    tr.step = 0
    tr.fit()
    best = ckpt.read_checkpoint_meta(tmp_path, "best")
    vals = {h["step"]: h["valid_loss"] for h in tr.history}
    assert set(vals) == {5, 10, 15}
    assert best["step"] in (10, 15)  # step 5 (pruning still running) is never "best"
    assert best["best_val"] == pytest.approx(min(vals[10], vals[15]))
    assert pruner.sparsity() == pytest.approx(0.9, abs=0.02)


def test_resume_uses_this_runs_optimiser_settings(tmp_path: Path) -> None:
    first = make("egru", out_dir=tmp_path, max_steps=8, stop_at=3, wdecay=0.01)
    first.fit()
    again = make("egru", out_dir=tmp_path, max_steps=8, wdecay=0.5, beta2=0.99)
    again.resume(tmp_path)
    decays = sorted({g["weight_decay"] for g in again.optimizer.param_groups})
    assert 0.5 in decays and 0.01 not in decays
    assert all(g["betas"][1] == 0.99 for g in again.optimizer.param_groups)
    assert again.optimizer.state  # the moments did come from the checkpoint


def test_resume_refuses_a_different_model(tmp_path: Path) -> None:
    make(out_dir=tmp_path, max_steps=2).fit()
    other = make("lstm", out_dir=tmp_path, max_steps=2)
    with pytest.raises(ckpt.CheckpointError, match="different model.*cell"):
        other.resume(tmp_path)


def test_nan_loss_stops_training() -> None:
    tr = make(max_steps=2)
    with torch.no_grad():
        tr.model.decoder.bias.fill_(math.nan)
    with pytest.raises(RuntimeError, match="training loss is nan"):
        tr.train_step()


def test_resume_after_a_crash_logs_the_same_mean_losses(tmp_path: Path) -> None:
    """A run killed between two metrics rows: the losses of the steps before its checkpoint
    still count in the next row's mean after resuming (log every 4 steps, save every 3)."""
    settings = {"max_steps": 12, "random_bptt": False, "log_interval": 4, "save_interval": 3,
                "eval_interval": 0}
    make("gru", out_dir=tmp_path / "full", **settings).fit()
    part = make("gru", out_dir=tmp_path / "part", **settings)
    real_next = part.task.next_batch

    def crash_at_step_7():
        if part.step == 7:
            raise KeyboardInterrupt("killed")
        return real_next()

    part.task.next_batch = crash_at_step_7
    with pytest.raises(KeyboardInterrupt):
        part.fit()
    again = make("gru", out_dir=tmp_path / "part", **settings)
    again.resume(tmp_path / "part")
    assert again.step == 6 and len(again.log_window) == 2  # steps 5 and 6
    again.fit()
    assert _csv_losses(tmp_path / "part") == _csv_losses(tmp_path / "full")
    assert len(_csv_losses(tmp_path / "full")) == 3


def test_testing_falls_back_to_final_weights_only_when_best_is_missing(tmp_path: Path) -> None:
    from dualsparse.apps.lm.runs import load_best_weights

    tr = make("gru", out_dir=tmp_path, max_steps=5, random_bptt=False)
    tr.fit()
    assert load_best_weights(tr.model, str(tmp_path)) == "best (step 5)"
    tensor_file = tmp_path / json.loads((tmp_path / "best.json").read_text())["tensors_file"]
    tensor_file.write_bytes(b"damaged" + tensor_file.read_bytes()[7:])
    with pytest.raises(ckpt.CheckpointError):
        load_best_weights(tr.model, str(tmp_path))
    (tmp_path / "best.json").unlink()
    assert load_best_weights(tr.model, str(tmp_path)) == "final"


def test_lm_task_implements_the_task_protocol() -> None:
    from dualsparse.train.task import Task

    assert isinstance(make().task, Task)
    assert not isinstance(object(), Task)


def test_select_by_must_name_a_validation_metric() -> None:
    with pytest.raises(ValueError, match="select_by"):
        TrainConfig(max_steps=1, select_by="")
    tr = make(max_steps=2, select_by="accuracy")
    with pytest.raises(ValueError, match="select_by='accuracy'.*'loss'"):
        tr.evaluate()


def test_integer_settings_must_be_ints() -> None:
    with pytest.raises(ValueError, match="max_steps must be an int"):
        TrainConfig(max_steps=2.5)
    with pytest.raises(ValueError, match="eval_interval must be an int >= 0"):
        TrainConfig(max_steps=2, eval_interval=-1)


class _SteepTask:
    """A one-batch task whose loss has a gradient of norm 100 on a bias-free linear map."""

    steps_per_epoch = 1

    def __init__(self) -> None:
        self.x = torch.zeros(1, 4)
        self.x[0, 0] = 100.0

    def next_batch(self) -> torch.Tensor:
        return self.x

    def lr_scale(self, batch: torch.Tensor) -> float:
        return 1.0

    def training_loss(self, model: torch.nn.Module, batch: torch.Tensor):
        return model(batch).sum(), {}

    def evaluate(self, model: torch.nn.Module, split: str) -> dict:
        return {"loss": 0.0}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@pytest.mark.parametrize("clip", [0.5, 0.0])
def test_gradient_clipping_bounds_the_update(clip: float) -> None:
    """SGD at lr 1: the update is the (clipped) gradient; its norm is 100 unclipped, ``clip``
    clipped; the reported grad_norm is always the norm before clipping."""
    model = torch.nn.Linear(4, 1, bias=False)
    before = model.weight.detach().clone()
    cfg = TrainConfig(max_steps=1, lr=1.0, optimizer="sgd", clip=clip, tensorboard=False,
                      progress=False, eval_interval=0)
    out = Trainer(model, _SteepTask(), cfg).train_step()
    assert out["grad_norm"] == pytest.approx(100.0)
    delta = before - model.weight.detach()
    expected = torch.tensor([[clip if clip else 100.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(delta, expected, rtol=1e-5, atol=1e-6)


def test_resumed_lstm_state_is_aligned_and_the_next_step_bitwise_equal(tmp_path) -> None:
    # safetensors returns views into one buffer that are not 64-byte aligned; CPU kernels
    # then rounded differently, so this resume was not bitwise (found by the fuzz tests)
    def trainer(out):
        set_seed(0)
        tok = torch.arange(120) * 5 % 20
        task = LMTask(tok, tok[:60], tok[:40], batch_size=2, bptt=2, random_bptt=True, seed=0)
        return Trainer(RNNLanguageModel(20, 6, [8, 6], cell="lstm"), task,
                       TrainConfig(max_steps=2, lr=3e-3, eval_interval=0, out_dir=str(out),
                                   tensorboard=False, progress=False))

    a = trainer(tmp_path / "a")
    a.train_step()
    a.save("latest")
    a.train_step()
    b = trainer(tmp_path / "b")
    b.resume(tmp_path / "a")
    assert all(t.data_ptr() % 64 == 0 for s in b.task.state for t in s)
    b.train_step()
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
