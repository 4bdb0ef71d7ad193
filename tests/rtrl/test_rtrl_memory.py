"""Influence memory is estimated before allocation and refused clearly; non-finite refused."""

from __future__ import annotations

import pytest
import torch

from dualsparse.models import EGRUCell
from dualsparse.rtrl import DenseRTRL, SparseRTRL
from dualsparse.rtrl.memory import check_fits, default_max_bytes, format_bytes, total_memory


def test_issue_example_is_refused_with_the_number_and_what_fits():
    # p = 3*300*300 + 3*300*4 + 2*900 + 300 = 275,700 columns; float32; two buffers
    cell = EGRUCell(4, 300)
    eng = DenseRTRL(cell, max_bytes=8 * 10**9)
    need = 64 * (2 * 300 * 275_700 + 2 * 300 * 300) * 4
    assert eng.influence_bytes(64) == need
    with pytest.raises(ValueError) as err:
        eng.reset(64)
    msg = str(err.value)
    assert format_bytes(need) in msg and "42.4 GB" in msg
    assert "max_bytes=8.0 GB" in msg
    fit = 8 * 10**9 // eng.influence_bytes(1)
    assert f"batch_size <= {fit} fits" in msg and "SparseRTRL" in msg
    eng.max_bytes = eng.influence_bytes(1)     # exactly one sample fits
    eng.reset(1)
    assert eng.M.numel() * eng.M.element_size() * 2 <= eng.influence_bytes(1)


def test_default_limit_is_half_the_machine_and_refuses_huge_batches():
    cpu = torch.device("cpu")
    assert default_max_bytes(cpu) == int(0.5 * total_memory(cpu)) > 0
    eng = SparseRTRL(EGRUCell(4, 300))
    assert eng.max_bytes == default_max_bytes(cpu)
    with pytest.raises(ValueError, match="not even batch_size=1 fits|batch_size <="):
        eng.reset(10**7)


def test_sparse_estimate_counts_kept_columns_only():
    cell = EGRUCell(3, 20, dtype=torch.float64)
    full = SparseRTRL(cell)
    g = torch.Generator().manual_seed(0)
    masks = {"weight_hh": torch.rand(60, 20, generator=g) < 0.25}
    pruned = SparseRTRL(cell, masks)
    kept = int(pruned.layout.kept.sum())
    assert pruned.influence_bytes(4) == 5 * 20 * kept * 8
    assert pruned.influence_bytes(4) < full.influence_bytes(4)
    pruned.reset(4)
    assert pruned.m_bytes <= pruned.influence_bytes(4)
    with pytest.raises(ValueError, match="not even batch_size=1"):
        SparseRTRL(cell, masks, max_bytes=100).reset(1)


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "1GB"])
def test_bad_max_bytes_raises(bad):
    with pytest.raises(ValueError, match="max_bytes"):
        DenseRTRL(EGRUCell(2, 4), max_bytes=bad)


def test_check_fits_message_when_nothing_fits():
    with pytest.raises(ValueError, match=r"needs 3.0 kB .*not even batch_size=1 fits"):
        check_fits("X", 1, 2000, 1000, 2500, "detail")
    check_fits("X", 1, 2000, 1000, 3000, "detail")     # exactly fits: no error


@pytest.mark.parametrize("engine_cls", [DenseRTRL, SparseRTRL])
@pytest.mark.parametrize("name", ["weight_hh", "bias_ih", "threshold_raw"])
def test_non_finite_parameters_are_refused(engine_cls, name):
    cell = EGRUCell(2, 5, dtype=torch.float64)
    eng = engine_cls(cell)
    x = torch.zeros(1, 2, dtype=torch.float64)
    eng.reset(1)
    eng.step(x)
    with torch.no_grad():
        getattr(cell, name).view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=f"{name} contains NaN or inf"):
        eng.step(x)
    with pytest.raises(ValueError, match=name):
        eng.reset(1)
    with torch.no_grad():
        getattr(cell, name).view(-1)[0] = float("inf")
    with pytest.raises(ValueError, match=name):
        engine_cls(cell).reset(1)


def test_non_finite_inputs_and_grads_are_refused():
    eng = DenseRTRL(EGRUCell(2, 5, dtype=torch.float64))
    eng.reset(2)
    with pytest.raises(ValueError, match="input contains NaN"):
        eng.step(torch.tensor([[0.0, float("inf")], [0.0, 0.0]], dtype=torch.float64))
    eng.step(torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="grad_y contains NaN"):
        eng.accumulate(torch.full((2, 5), float("nan"), dtype=torch.float64))


def test_dense_engine_reuses_its_two_buffers():
    """The honest dense baseline allocates no full-size tensor per step."""
    eng = DenseRTRL(EGRUCell(3, 6, dtype=torch.float64))
    eng.reset(2)
    ptrs = {eng.M.data_ptr(), eng._next.data_ptr()}
    x = torch.randn(2, 3, dtype=torch.float64)
    for _ in range(5):
        eng.step(x)
        assert {eng.M.data_ptr(), eng._next.data_ptr()} == ptrs
    assert bool(eng.M.ne(0).any())
