"""The online learner: end-of-sequence updates equal BPTT training; online updates act."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from dualsparse.models import EGRUCell
from dualsparse.rtrl import DenseRTRL, SparseRTRL, run_cell
from dualsparse.rtrl.learner import OnlineLearner
from dualsparse.rtrl.tasks import delayed_recall_stream, spiral_task, split

H = 6


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    cell = EGRUCell(2, H, threshold_mean=0.2, dtype=torch.float64)
    with torch.no_grad():
        for n in ("weight_ih", "weight_hh"):
            getattr(cell, n).mul_(3)
    readout = torch.nn.Linear(H, 2, dtype=torch.float64)
    return cell, readout


@pytest.mark.parametrize("engine_cls", [DenseRTRL, SparseRTRL])
def test_sequence_updates_equal_bptt_training(engine_cls):
    xs, labels = spiral_task(8, seq_len=9, seed=1, dtype=torch.float64)
    cell, readout = _setup()
    cell_b, readout_b = copy.deepcopy(cell), copy.deepcopy(readout)
    mask = {"weight_hh": torch.rand(3 * H, H, generator=torch.Generator().manual_seed(2)) < 0.6}
    with torch.no_grad():
        cell.weight_hh.mul_(mask["weight_hh"])
        cell_b.weight_hh.mul_(mask["weight_hh"])
    opt = torch.optim.SGD([*cell.parameters(), *readout.parameters()], lr=0.5)
    learner = OnlineLearner(engine_cls(cell, mask), readout, opt, update="sequence")
    opt_b = torch.optim.SGD([*cell_b.parameters(), *readout_b.parameters()], lr=0.5)
    for _ in range(3):
        learner.start(xs.size(1))
        for t in range(xs.size(0)):
            learner.observe(xs[t], labels if t == xs.size(0) - 1 else None)
        learner.apply()
        opt_b.zero_grad()
        loss = F.cross_entropy(readout_b(run_cell(cell_b, xs)[-1]), labels)
        loss.backward()
        cell_b.weight_hh.grad.mul_(mask["weight_hh"])
        opt_b.step()
    for (n, p), p_b in zip(cell.named_parameters(), cell_b.parameters(), strict=True):
        assert float((p - p_b).detach().abs().max()) < 1e-10, n
        assert not torch.equal(p, getattr(_setup()[0], n)), n  # it did move
    assert bool((cell.weight_hh[~mask["weight_hh"]] == 0).all())


def test_step_updates_change_parameters_every_step():
    xs, labels = spiral_task(4, seq_len=5, seed=1, dtype=torch.float64)
    cell, readout = _setup()
    opt = torch.optim.SGD([*cell.parameters(), *readout.parameters()], lr=0.1)
    learner = OnlineLearner(SparseRTRL(cell), readout, opt, update="step")
    learner.start(4)
    before = cell.weight_ih.detach().clone()
    for t in range(xs.size(0)):
        _, loss = learner.observe(xs[t], labels)
        assert loss is not None and learner.pending == 0
        assert not torch.equal(before, cell.weight_ih)
        before = cell.weight_ih.detach().clone()


def test_spiral_task_shapes_and_classes():
    xs, labels = spiral_task(100, seed=3)
    assert xs.shape == (17, 100, 2) and labels.shape == (100,)
    assert 20 < int(labels.sum()) < 80
    # the two classes turn in opposite directions: sign of the cross product x_t x x_{t+1}
    cross = xs[:-1, :, 0] * xs[1:, :, 1] - xs[:-1, :, 1] * xs[1:, :, 0]
    assert bool(((cross.mean(0) > 0) == (labels == 0)).all())
    parts = split(xs, labels)
    assert parts["train"][0].size(1) == 70 and parts["test"][1].numel() == 15
    with pytest.raises(ValueError, match="num_sequences"):
        spiral_task(0)
    with pytest.raises(ValueError, match="update"):
        OnlineLearner(SparseRTRL(_setup()[0]), torch.nn.Linear(H, 2), None, update="bogus")
    with pytest.raises(ValueError, match="clip_norm"):
        OnlineLearner(SparseRTRL(_setup()[0]), torch.nn.Linear(H, 2), None, clip_norm=0)
    with pytest.raises(ValueError, match="fractions"):
        split(xs, labels, (0.7, 0.4))


def test_delayed_recall_stream_episodes():
    s = delayed_recall_stream(2000, 3, 7, num_symbols=3, seed=4)
    assert s.inputs.shape == (2000, 1, 4) and s.targets.shape == (2000,)
    x = s.inputs[:, 0]
    cues = (x[:, :3].sum(1) == 1).nonzero().squeeze(1).tolist()
    queries = (x[:, 3] == 1).nonzero().squeeze(1).tolist()
    assert queries == (s.targets >= 0).nonzero().squeeze(1).tolist()
    assert s.num_queries == len(queries) and len(cues) - len(queries) in (0, 1)
    delays = set()
    for c, q in zip(cues, queries, strict=False):
        assert int(s.targets[q]) == int(x[c, :3].argmax())   # the cued symbol is asked for
        assert float(x[c + 1:q].abs().sum()) == 0.0         # blanks in between
        delays.add(q - c - 1)
    assert delays == set(range(3, 8))                       # every delay in the range occurs
    for c, q in zip(cues[1:], queries, strict=False):
        assert c == q + 1                                   # the next cue follows at once
    assert len({int(t) for t in s.targets[queries]}) == 3
    with pytest.raises(ValueError, match="delay_max"):
        delayed_recall_stream(10, 5, 4)
    with pytest.raises(ValueError, match="num_symbols"):
        delayed_recall_stream(10, 1, 2, num_symbols=1)
