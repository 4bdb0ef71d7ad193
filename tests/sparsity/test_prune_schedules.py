"""Schedules: AGP exactness, iterative rounds, Narang's theta/phi and q, resume points."""

import pytest
import torch

from dualsparse.models import GRU
from dualsparse.sparsity import (
    AGPSchedule,
    IterativeSchedule,
    NarangSchedule,
    Pruner,
    PruningSpec,
    block_theta,
    narang_q,
    narang_theta,
    narang_threshold,
    schedule_from_dict,
)


def test_agp_formula_and_exact_end():
    s = AGPSchedule(start=10, end=50, frequency=10)
    assert s.update_steps() == [10, 20, 30, 40, 50]
    assert s.sparsity(5, 0.8) == 0.0
    assert s.sparsity(10, 0.8) == 0.0
    assert s.sparsity(25, 0.8) == pytest.approx(0.8 * (1 - 0.75 ** 3))  # value of point 20
    assert s.sparsity(40, 0.8) == pytest.approx(0.8 * (1 - 0.25 ** 3))
    assert s.sparsity(50, 0.8) == 0.8
    assert s.sparsity(10 ** 6, 0.8) == 0.8
    with pytest.raises(ValueError, match="multiple of frequency"):
        AGPSchedule(0, 45, 10)


def test_agp_pruner_hits_target_exactly_at_the_end():
    torch.manual_seed(0)
    gru = GRU(8, 16)  # weight_ih 48x8 = 384, weight_hh 48x16 = 768
    pruner = Pruner(gru, PruningSpec(["weight_*"], sparsity=0.875), AGPSchedule(0, 40, 4))
    opt = torch.optim.SGD(gru.parameters(), lr=0.1)
    pruner.attach_optimizer(opt)
    x = torch.randn(3, 2, 8)
    seen = []
    for step in range(1, 41):
        opt.zero_grad()
        gru(x)[0].sum().backward()
        opt.step()
        if pruner.step(step):
            seen.append((step, pruner.sparsity()))
        if step < 40:
            assert pruner.sparsity() < 0.875
    assert [s for s, _ in seen] == list(range(4, 41, 4))
    sparsities = [v for _, v in seen]
    assert sparsities == sorted(sparsities)
    assert pruner.sparsity() == 0.875
    assert all(r["sparsity"] == 0.875 for r in pruner.report())


def test_iterative_rounds():
    geo = IterativeSchedule(3, start=100, end=300)
    assert geo.update_steps() == [100, 200, 300]
    assert geo.sparsity(99, 0.875) == 0.0
    assert geo.sparsity(100, 0.875) == pytest.approx(0.5)  # 1 - 0.125^(1/3)
    assert geo.sparsity(250, 0.875) == pytest.approx(0.75)
    assert geo.sparsity(300, 0.875) == 0.875
    lin = IterativeSchedule(4, 0, 3, spacing="linear")
    assert [lin.sparsity(s, 0.8) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert IterativeSchedule(1, 7, 7).update_steps() == [7]
    with pytest.raises(ValueError, match="start == end"):
        IterativeSchedule(1, 0, 10)
    with pytest.raises(ValueError, match="rounds need"):
        IterativeSchedule(5, 0, 2)


def test_last_update_step_handles_skipped_steps():
    s = AGPSchedule(0, 100, 10)
    assert s.last_update_step(0) == 0
    assert s.last_update_step(37) == 30
    assert IterativeSchedule(2, 5, 9).last_update_step(4) is None
    torch.manual_seed(0)
    gru = GRU(4, 8)
    pruner = Pruner(gru, PruningSpec(["weight_hh_l0"], sparsity=0.5), IterativeSchedule(2, 5, 9))
    assert not pruner.step(4)
    assert pruner.step(13)  # jumped over both rounds: the latest applies
    assert pruner.last_update == 9 and pruner.sparsity() == 0.5
    assert not pruner.step(14)


def test_narang_theta_phi_formula():
    # Eq. 1: theta = 2 q freq / (2 (ramp - start) + 3 (end - ramp))
    assert narang_theta(0.2, 1000, 5000, 10000, 100) == pytest.approx(
        2 * 0.2 * 100 / (2 * 4000 + 3 * 5000))
    theta = narang_theta(1.0, 0, 30, 90, 10)  # 20 / 240
    assert theta == pytest.approx(1 / 12)
    phi = 1.5 * theta
    assert narang_threshold(9, theta, phi, 0, 30, 10) == pytest.approx(theta * 10 / 10)
    assert narang_threshold(40, theta, phi, 0, 30, 10) == pytest.approx(
        (theta * 31 + phi * 11) / 10)
    # with phi = 1.5 theta the threshold reaches about q at the end
    assert narang_threshold(90, theta, phi, 0, 30, 10) == pytest.approx(1.0, abs=0.03)
    assert block_theta(0.1, 16) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="start < ramp < end"):
        narang_theta(1.0, 10, 5, 20, 1)


def test_narang_q_helper():
    w = torch.arange(1.0, 101.0).reshape(10, 10)  # |w| = 1..100
    assert narang_q(w, 90) == pytest.approx(90.1)  # linear interpolation, like numpy
    assert narang_q(-w, 50) == pytest.approx(50.5)
    # 2x5 blocks scored by max: block maxima 15, 20, 35, 40, ..., 95, 100
    assert narang_q(w, 100, block=(2, 5)) == 100.0
    with pytest.raises(ValueError, match="percentile"):
        narang_q(w, 120)


def test_narang_schedule_warns_and_prunes_below_threshold():
    with pytest.warns(UserWarning, match="final sparsity"):
        sched = NarangSchedule(start=0, ramp=30, end=90, frequency=10)
    assert sched.update_steps() == [10, 20, 30, 40, 50, 60, 70, 80]
    torch.manual_seed(0)
    gru = GRU(4, 8)
    w0 = gru.weight_hh_l0.detach().clone()
    pruner = Pruner(gru, PruningSpec(["weight_hh_l0"]), sched)
    q = pruner.q["weight_hh_l0"]  # start 0: the weights at build enter step 0
    changes = [pruner.step(s) for s in range(0, 100)]  # no training: weights do not move
    assert q == pytest.approx(narang_q(w0, 90))
    assert sum(changes) >= 2
    # the last update is at 80 (Alg. 1 updates strictly before end): (31 theta + 51 phi) / 10
    assert sched.threshold_fraction(99) == pytest.approx((31 + 1.5 * 51) / 120)
    eps = q * sched.threshold_fraction(99)
    keep = pruner.masks.mask("weight_hh_l0")
    assert torch.equal(keep, w0.abs() >= eps)
    assert pruner.sparsity() == pytest.approx(float((w0.abs() < eps).double().mean()))
    # the position and q survive a round trip
    state = pruner.state_dict()
    p2 = Pruner.from_config(GRU(4, 8), state)
    assert p2.q == pruner.q and p2.last_update == 80


def test_schedule_dict_round_trip_and_errors():
    for s in (AGPSchedule(0, 10, 5, 0.1), IterativeSchedule(3, 0, 8, "linear"),
              NarangSchedule(0, 5, 20, 2, 2.0, warn=False)):
        again = schedule_from_dict(s.to_dict())
        assert type(again) is type(s) and again.to_dict() == s.to_dict()
    assert schedule_from_dict(None) is None
    with pytest.raises(ValueError, match="unknown schedule type"):
        schedule_from_dict({"type": "cosine"})
    with pytest.raises(ValueError, match="bad agp"):
        schedule_from_dict({"type": "agp", "start": 0})
    with pytest.raises(ValueError, match="final sparsity"):
        AGPSchedule(0, 10, 5).sparsity(3, 1.0)
