"""Counted MACs follow the work done and fall with activity and weight sparsity."""

from __future__ import annotations

import pytest
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
    """GRU, no masks: step 1 fills all columns but W_hh's (y_0 = 0); at step 2 all units are
    active, all rows of M nonzero and all columns live."""
    torch.manual_seed(0)
    cell = GRUCell(I, H, dtype=torch.float64)
    eng = SparseRTRL(cell)
    eng.reset(B)
    xs = _inputs(2)
    eng.step(xs[0])
    first = eng.counter.records[-1].macs["update"]
    p = eng.num_kept
    assert first == B * (p - 3 * H * H)   # M_0 = 0: only the nonzero immediate terms
    assert eng.live_fraction == (p - 3 * H * H) / p
    eng.step(xs[1])
    assert eng.live_fraction == 1.0
    rec = eng.counter.records[-1]
    live1 = p - 3 * H * H   # products run over the columns live before the step
    assert rec.macs["update"] == B * (H * live1 + H * H * live1 + p)
    assert rec.macs["jacobian"] == B * (3 * H * H + H * H)
    assert rec.active_fraction == 1.0


@pytest.mark.parametrize("backend", ["numba", "gemm", "torch"])
def test_update_macs_fall_with_weight_sparsity(backend):
    torch.manual_seed(0)
    cell = EGRUCell(I, H, threshold_mean=0.5, dtype=torch.float64)
    xs = _inputs()
    macs, mem = [], []
    for density in (1.0, 0.5, 0.1):
        masks = _masks(density)
        with torch.no_grad():
            for n, m in masks.items():
                getattr(cell, n).mul_(m)
        s = _run(SparseRTRL(cell, masks, backend=backend), xs)
        macs.append(s["macs_update"])
        mem.append(s["m_bytes"])
    assert macs[0] > macs[1] > macs[2]
    assert mem[0] > mem[1] > mem[2]
    kept = int(_masks(0.1)["weight_hh"].sum() + _masks(0.1)["weight_ih"].sum())
    assert mem[2] == B * H * (kept + 6 * H + H) * 8   # biases and thresholds are unmasked


@pytest.mark.parametrize("backend", ["numba", "gemm", "torch"])
def test_update_macs_fall_with_activity_sparsity(backend):
    """Same weights: higher thresholds and a narrower surrogate leave fewer active units."""
    xs = _inputs()
    active, macs = [], []
    for mean, width in ((0.2, 1.0), (0.8, 0.2)):
        torch.manual_seed(0)
        cell = EGRUCell(I, H, threshold_init="constant", threshold_mean=mean,
                        surrogate_width=width, dtype=torch.float64)
        s = _run(SparseRTRL(cell, backend=backend), xs)
        active.append(s["active_fraction"])
        macs.append(s["macs_update"])
    assert active[0] > active[1]
    assert macs[0] > macs[1]
    dense = _run(DenseRTRL(cell), xs)
    assert dense["macs_total"] > macs[1]


def test_silent_units_leave_their_columns_dead():
    """W_hh columns of units that never emitted are never touched (not live, still zero)."""
    torch.manual_seed(0)
    cell = EGRUCell(I, H, threshold_init="constant", threshold_mean=0.9, dtype=torch.float64)
    eng = SparseRTRL(cell)
    eng.reset(B)
    ever = torch.zeros(B, H, dtype=torch.bool)
    for x in _inputs(6):
        ever |= eng.y != 0        # y_{t-1} feeds this step's immediate terms
        eng.step(x)
    assert bool((~ever).any())
    full = eng.influence()
    off = eng.layout.offsets["weight_hh"]
    w_cols = full[:, :, off:off + 3 * H * H].reshape(B, H, 3 * H, H)
    silent = ~ever
    assert bool((w_cols.permute(0, 3, 1, 2)[silent] == 0).all())
    assert eng.live_fraction < 1.0


def test_density_of_m_is_measured():
    torch.manual_seed(0)
    cell = EGRUCell(I, H, threshold_mean=0.7, surrogate_width=0.3, dtype=torch.float64)
    xs = _inputs()
    sp = _run(SparseRTRL(cell, measure_density=True), xs)
    de = _run(DenseRTRL(cell, measure_density=True), xs)
    assert 0.0 < sp["m_density"] < 1.0
    assert abs(sp["m_density"] - de["m_density"]) < 1e-12
    assert 0.0 < sp["j_density"] <= 1.0
