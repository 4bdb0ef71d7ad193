"""LMTask and evaluate_lm: data order, state carrying, perplexity, accounting, DDP columns."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dualsparse.accounting import ActivityMeter
from dualsparse.apps.lm import LMTask, carry_state, evaluate_lm
from dualsparse.data.batching import batchify
from dualsparse.models.lm import RNNLanguageModel


def _stream(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 20, (n,), generator=torch.Generator().manual_seed(seed))


def _task(**kw) -> LMTask:
    args = {"batch_size": 3, "bptt": 5}
    args.update(kw)
    return LMTask(_stream(200), _stream(60, 1), _stream(40, 2), **args)


def test_epochs_roll_over_and_reset_the_state() -> None:
    task = _task()
    n = task.steps_per_epoch
    assert n == math.ceil((200 // 3 - 1) / 5)
    model = RNNLanguageModel(20, 6, [6], cell="gru")
    seen = []
    for _ in range(n):
        seg = task.next_batch()
        seen.append(seg.start)
        task.training_loss(model, seg)
    assert task.epoch == 0 and task.state is not None
    seg = task.next_batch()
    assert (task.epoch, seg.start, task.state) == (1, 0, None)
    assert seen == list(range(0, 200 // 3 - 1, 5))


def test_ddp_ranks_take_disjoint_column_blocks() -> None:
    train = torch.arange(240)
    parts = [LMTask(train, _stream(30), _stream(30), batch_size=2, bptt=4, rank=r,
                    world_size=3).source for r in range(3)]
    full = batchify(train, 6)
    torch.testing.assert_close(torch.cat(parts, 1), full)
    assert all(len(LMTask(train, _stream(30), _stream(30), batch_size=2, bptt=4, rank=r,
                          world_size=3, random_bptt=True, seed=4).iterator) ==
               len(LMTask(train, _stream(30), _stream(30), batch_size=2, bptt=4, rank=0,
                          world_size=3, random_bptt=True, seed=4).iterator) for r in range(3))


def test_carry_modes() -> None:
    y, c = torch.ones(2, 3, requires_grad=True), torch.full((2, 3), 2.0, requires_grad=True)
    full = carry_state(((y, c),), "full")
    assert torch.equal(full[0][1], c) and not full[0][0].requires_grad
    out = carry_state(((y, c),), "output")
    assert torch.equal(out[0][0], y) and torch.equal(out[0][1], torch.zeros(2, 3))
    with pytest.raises(ValueError, match="carry"):
        _task(carry="none")


def test_training_loss_adds_ar_and_tar() -> None:
    torch.manual_seed(0)
    model = RNNLanguageModel(20, 6, [6], cell="lstm")
    seg = _task().next_batch()
    plain, stats = _task().training_loss(model, seg)
    reg, stats_reg = _task(alpha=2.0, beta=1.0).training_loss(model, seg)
    assert reg.item() > plain.item()
    assert stats["loss"] == pytest.approx(stats_reg["loss"])  # the logged loss is the CE
    assert stats["tokens"] == seg.target.numel() and stats["activity"] == 1.0
    with pytest.raises(ValueError, match="alpha"):
        _task(alpha=-1.0)


def _train_egru_rate(steps: int, **kw) -> float:
    """Event rate of a small EGRU LM after ``steps`` Adam steps with the task's losses."""
    torch.manual_seed(3)
    model = RNNLanguageModel(20, 8, [16, 16], cell="egru",
                             cell_options={"threshold_mean": 0.05})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    task = _task(**kw)
    for _ in range(steps):
        loss, stats = task.training_loss(model, task.next_batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
    rates = []
    for _ in range(5):
        rates.append(task.training_loss(model, task.next_batch())[1]["activity"])
    return sum(rates) / len(rates)


def test_activity_penalty_lowers_the_event_rate() -> None:
    plain = _train_egru_rate(40)
    penalised = _train_egru_rate(40, activity_penalty=5.0)
    assert penalised < 0.5 * plain, (plain, penalised)
    model = RNNLanguageModel(20, 6, [6], cell="lstm")
    with pytest.raises(ValueError, match="needs an EGRU"):
        _task(activity_penalty=1.0).training_loss(model, _task().next_batch())
    with pytest.raises(ValueError, match="activity_target"):
        _task(activity_target=1.5)


def test_evaluate_matches_a_manual_computation_and_feeds_the_meter() -> None:
    torch.manual_seed(1)
    model = RNNLanguageModel(20, 6, [8, 6], cell="egru",
                             cell_options={"threshold_mean": 0.2})
    data = _stream(31, 3)
    meter = ActivityMeter(None, decoder=model.decoder)
    res = evaluate_lm(model, data, batch_size=1, bptt=7, meter=meter)
    with torch.no_grad():
        model.eval()
        logits, _ = model(data[:-1].view(-1, 1))
        ce = F.cross_entropy(logits.view(-1, 20), data[1:])
    assert res["tokens"] == 30
    assert res["loss"] == pytest.approx(ce.item(), rel=1e-5)
    assert res["ppl"] == pytest.approx(math.exp(ce.item()), rel=1e-5)
    report = meter.report()
    assert [r.hidden_size for r in report.layers] == [8, 6]
    assert all(r.tokens == 30 for r in report.layers)
    assert report.decoder is not None and report.decoder.dense_macs == 20 * 6
    assert report.layers[0].dense_macs == 3 * 8 * (6 + 8)
    act = sum((1 - r.activity_sparsity) * r.hidden_size for r in report.layers) / 14
    assert res["activity"] == pytest.approx(act, rel=1e-6)
    assert 0.0 <= report.layers[1].activity_sparsity <= 1.0
    assert report.layers[0].effective_macs <= report.layers[0].dense_macs
    # with the full state carried, the segment length changes only the speed
    longer = evaluate_lm(model, data, batch_size=1, bptt=30)
    assert longer["loss"] == pytest.approx(res["loss"], rel=1e-5)
    assert _task(eval_bptt=30).eval_bptt == 30 and _task().eval_bptt == 5


def test_task_state_roundtrip_and_mismatch() -> None:
    torch.manual_seed(2)
    model = RNNLanguageModel(20, 6, [6], cell="egru")
    a = _task(random_bptt=True, seed=3)
    for _ in range(3):
        a.training_loss(model, a.next_batch())
    b = _task(random_bptt=True, seed=3)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.next_batch().input, b.next_batch().input)
    assert all(torch.equal(x, y) for s, t in zip(a.state, b.state, strict=True)
               for x, y in zip(s, t, strict=True))
    with pytest.raises(ValueError, match="seed=3->4"):
        _task(random_bptt=True, seed=4).load_state_dict(a.state_dict())
    # a DDP resume with another number of processes would read other data: refused
    with pytest.raises(ValueError, match="world_size=1->2"):
        _task(random_bptt=True, seed=3, world_size=2).load_state_dict(a.state_dict())
    # checkpoints written before world_size was recorded count as one process
    old = a.state_dict()
    del old["settings"]["world_size"]
    _task(random_bptt=True, seed=3).load_state_dict(old)
    with pytest.raises(ValueError, match="split"):
        a.evaluate(model, "train")
