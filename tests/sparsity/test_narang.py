"""Narang et al. as published: q when pruning starts, the N_b^(1/4) block slope, the GL cut,
the mask-update history, and AGP against torch.ao.pruning's CubicSL."""

import warnings

import pytest
import torch
from torch import nn

from dualsparse.models import GRU
from dualsparse.sparsity import (
    AGPSchedule,
    NarangSchedule,
    NormCut,
    Pruner,
    PruningSpec,
    narang_q,
    schedule_from_dict,
)
from dualsparse.sparsity.scoring import block_scores


def _narang(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return NarangSchedule(*args, **kwargs)


def test_q_is_taken_when_pruning_starts_not_from_the_initial_weights():
    torch.manual_seed(0)
    gru = GRU(4, 8)
    w_init = gru.weight_hh_l0.detach().clone()
    pruner = Pruner(gru, PruningSpec(["weight_hh_l0"]), _narang(20, 40, 80, 10))
    for step in range(19):
        pruner.step(step)
    assert pruner.q == {} and pruner.history == []
    with torch.no_grad():  # "training" moves the weights before pruning starts
        gru.weight_hh_l0.mul_(3.0)
    pruner.step(19)  # these weights enter optimiser step 20, the start
    q = pruner.q["weight_hh_l0"]
    assert q == pytest.approx(narang_q(3.0 * w_init, 90))
    assert q == pytest.approx(3.0 * narang_q(w_init, 90))  # not the initial weights' q
    with torch.no_grad():  # later moves do not change q
        gru.weight_hh_l0.mul_(0.5)
    pruner.step(35)
    assert pruner.q["weight_hh_l0"] == q


@pytest.mark.parametrize("block", [(2, 2), (4, 1), (8, 4)])
def test_block_threshold_is_elementwise_q_times_fourth_root_of_block_size(block):
    torch.manual_seed(1)
    gru = GRU(8, 64)
    with torch.no_grad():  # trained weights are closer to a Gaussian than the uniform init
        gru.weight_hh_l0.copy_(0.1 * torch.randn(192, 64))
    w = gru.weight_hh_l0.detach().clone()
    sched = _narang(0, 30, 90, 10)
    pruner = Pruner(gru, PruningSpec([{"name": "weight_hh_l0", "block": list(block)}]), sched)
    pruner.step(30)  # update point 30, weights never move
    q = narang_q(w, 90)  # element-wise percentile of |w|
    eps = q * sched.threshold_fraction(30) * (block[0] * block[1]) ** 0.25
    assert pruner.history[-1]["thresholds"]["weight_hh_l0"] == pytest.approx(eps)
    keep = block_scores(w, block, "max") >= eps
    expect = keep.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
    assert torch.equal(pruner.masks.mask("weight_hh_l0"), expect)
    assert 0.0 < pruner.sparsity() < 1.0 or block == (8, 4)  # 8x4 not reached yet at 30


def test_q_from_blocks_uses_block_scores_without_scaling():
    torch.manual_seed(2)
    gru = GRU(8, 16)
    w = gru.weight_hh_l0.detach().clone()
    sched = _narang(0, 30, 90, 10, q_from="blocks")
    pruner = Pruner(gru, PruningSpec([{"name": "weight_hh_l0", "block": [4, 4]}]), sched,
                    q_percentile=80)
    pruner.step(40)
    q = narang_q(w, 80, (4, 4), "max")
    assert pruner.q["weight_hh_l0"] == pytest.approx(q)
    assert sched.block_factor((4, 4)) == 1.0
    assert pruner.history[-1]["thresholds"]["weight_hh_l0"] == pytest.approx(
        q * sched.threshold_fraction(40))
    assert schedule_from_dict(sched.to_dict()).q_from == "blocks"
    with pytest.raises(ValueError, match="q_from"):
        _narang(0, 30, 90, 10, q_from="rows")


def test_narang_end_logs_the_reached_sparsity_and_history_round_trips():
    torch.manual_seed(3)
    lines = []
    gru = GRU(4, 8)
    pruner = Pruner(gru, PruningSpec(["weight_*"]), _narang(0, 20, 50, 10), log=lines.append)
    for step in range(60):
        pruner.step(step)
    assert [h["step"] for h in pruner.history] == [10, 20, 30, 40]
    sp = [h["sparsity"] for h in pruner.history]
    assert sp == sorted(sp) and sp[-1] == pruner.sparsity()
    assert set(pruner.history[-1]["tensors"]) == {"weight_ih_l0", "weight_hh_l0"}
    assert len(lines) == 1 and "step 40" in lines[0] and "not a target" in lines[0]
    assert f"{pruner.sparsity():.4f}" in lines[0]
    again = Pruner.from_config(GRU(4, 8), pruner.state_dict())
    assert again.history == pruner.history and again.q == pruner.q


def test_group_lasso_cut_zeroes_blocks_below_the_rms_threshold():
    torch.manual_seed(4)
    gru = GRU(4, 8)  # weight_hh 24x8, 2x2 blocks: 12x4 = 48 blocks
    with torch.no_grad():
        w = gru.weight_hh_l0
        w[:6].mul_(1e-4)   # 12 blocks far below the threshold (what GL leaves)
        w[6:8].fill_(2e-3)  # 4 blocks just above it
    lines = []
    pruner = Pruner(gru, PruningSpec([{"name": "weight_hh_l0", "block": [2, 2]}]),
                    NormCut(30, threshold=1e-3), group_lasso=1e-3, log=lines.append)
    for step in range(30):
        assert not pruner.step(step)
    assert pruner.step(30)
    mask = pruner.masks.mask("weight_hh_l0")
    assert not mask[:6].any() and mask[6:].all()
    assert pruner.sparsity() == 0.25
    cut = pruner.history[-1]["cut"]
    assert cut["threshold"] == 1e-3 and cut["sparsity_at"]["1x"] == 0.25
    assert cut["sparsity_at"]["10x"] == pytest.approx(8 / 24)  # catches rows 6-7 as well
    assert len(lines) == 1 and "block RMS < 0.001" in lines[0]
    assert schedule_from_dict(NormCut(30, 1e-3).to_dict()).to_dict() == NormCut(30, 1e-3
                                                                              ).to_dict()
    with pytest.raises(ValueError, match="threshold"):
        NormCut(3, 0.0)


@pytest.mark.parametrize("start, end, frequency, initial", [
    (0, 100, 10, 0.0), (10, 50, 5, 0.1), (0, 30, 30, 0.0), (3, 63, 20, 0.3)])
def test_agp_equals_torch_cubicsl_at_every_update_point(start, end, frequency, initial):
    from torch.ao.pruning import WeightNormSparsifier
    from torch.ao.pruning.scheduler.cubic_scheduler import CubicSL

    final = 0.8
    model = nn.Sequential(nn.Linear(8, 8))
    sparsifier = WeightNormSparsifier(sparsity_level=final, sparse_block_shape=(1, 1),
                                      zeros_per_block=1)
    sparsifier.prepare(model, config=[{"tensor_fqn": "0.weight"}])
    n = (end - start) // frequency
    scheduler = CubicSL(sparsifier, init_sl=initial, init_t=start, delta_t=frequency,
                        total_t=n, initially_zero=True)
    ours = AGPSchedule(start, end, frequency, initial)
    points = set(ours.update_steps())
    compared = 0
    for t in range(1, end + 2 * frequency):
        sparsifier.step()
        scheduler.step()  # its last_epoch is now t
        torch_sl = scheduler.get_last_sl()[0]
        if t in points or t > end or t < start:
            assert ours.sparsity(t, final) == torch_sl, t  # exactly, not approximately
            compared += 1
    assert compared >= len(points - {0})
