"""Counted MACs follow the work done and fall with activity and weight sparsity."""

from __future__ import annotations

import torch

from dualsparse.models import EGRUCell, GRUCell
from dualsparse.rtrl import DenseRTRL, SparseRTRL

H, I, B = 8, 3, 2


def _inputs(t: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(t, B, I, generator=g, dtype=torch.float64)


def _run(engine, xs):
    engine.reset(B)
    for x in xs:
        engine.step(x)
        engine.accumulate(torch.ones(B, H, dtype=torch.float64))
    return engine.counter.summary()


def _masks(density: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"weight_hh": torch.rand(3 * H, H, generator=g) < density,
            "weight_ih": torch.rand(3 * H, I, generator=g) < density}


def test_dense_counts_are_the_dense_formula():
    torch.manual_seed(0)
    cell = GRUCell(I, H, dtype=torch.float64)
    s = _run(DenseRTRL(cell), _inputs(3))
    p = 3 * H * I + 3 * H * H + 6 * H
    assert s["macs_update"] == 3 * B * (H * H * p + H * p)
    assert s["reduction"] == 1.0


def test_sparse_counts_one_gru_step_exactly():
    """GRU, no masks: at step 2 all units are active and all rows of M are nonzero."""
    torch.manual_seed(0)
    cell = GRUCell(I, H, dtype=torch.float64)
    eng = SparseRTRL(cell)
    eng.reset(B)
    xs = _inputs(2)
    eng.step(xs[0])
    first = eng.counter.records[-1].macs["update"]
    p = eng.num_kept
    assert first == B * p        # M_0 = 0: no diagonal or off-diagonal work, only Mbar
    eng.step(xs[1])
    rec = eng.counter.records[-1]
    assert rec.macs["update"] == B * (H * p + H * H * p + p)
    assert rec.macs["jacobian"] == B * (3 * H * H + H * H)
    assert rec.active_fraction == 1.0


def test_update_macs_fall_with_weight_sparsity():
    torch.manual_seed(0)
    cell = EGRUCell(I, H, threshold_mean=0.5, dtype=torch.float64)
    xs = _inputs()
    macs, mem = [], []
    for density in (1.0, 0.5, 0.1):
        masks = _masks(density)
        with torch.no_grad():
            for n, m in masks.items():
                getattr(cell, n).mul_(m)
        s = _run(SparseRTRL(cell, masks), xs)
        macs.append(s["macs_update"])
        mem.append(s["m_bytes"])
    assert macs[0] > macs[1] > macs[2]
    assert mem[0] > mem[1] > mem[2]
    kept = int(_masks(0.1)["weight_hh"].sum() + _masks(0.1)["weight_ih"].sum())
    assert mem[2] == B * H * (kept + 6 * H + H) * 8   # biases and thresholds are unmasked


def test_update_macs_fall_with_activity_sparsity():
    """Same weights: higher thresholds and a narrower surrogate leave fewer active units."""
    xs = _inputs()
    active, macs = [], []
    for mean, width in ((0.2, 1.0), (0.8, 0.2)):
        torch.manual_seed(0)
        cell = EGRUCell(I, H, threshold_init="constant", threshold_mean=mean,
                        surrogate_width=width, dtype=torch.float64)
        s = _run(SparseRTRL(cell), xs)
        active.append(s["active_fraction"])
        macs.append(s["macs_update"])
    assert active[0] > active[1]
    assert macs[0] > macs[1]
    dense = _run(DenseRTRL(cell), xs)
    assert dense["macs_total"] > macs[1]


def test_density_of_m_is_measured():
    torch.manual_seed(0)
    cell = EGRUCell(I, H, threshold_mean=0.7, surrogate_width=0.3, dtype=torch.float64)
    xs = _inputs()
    sp = _run(SparseRTRL(cell, measure_density=True), xs)
    de = _run(DenseRTRL(cell, measure_density=True), xs)
    assert 0.0 < sp["m_density"] < 1.0
    assert abs(sp["m_density"] - de["m_density"]) < 1e-12
    assert 0.0 < sp["j_density"] <= 1.0
