"""RTRL (dense and sparse) equals BPTT through the cell in float64; pruned columns stay 0."""

from __future__ import annotations

import pytest
import torch

from dualsparse.models import EGRUCell, GRUCell
from dualsparse.rtrl import DenseRTRL, SparseRTRL, _gemm, bptt_gradients

H, I, T, B = 7, 3, 10, 2
TOL = 1e-10


def make_cell(kind: str, reset_mode: str = "subtract_threshold", scale: float = 3.0,
              seed: int = 0):
    torch.manual_seed(seed)
    if kind == "gru":
        cell = GRUCell(I, H, dtype=torch.float64)
    else:
        cell = EGRUCell(I, H, reset_mode=reset_mode, threshold_mean=0.5, dtype=torch.float64)
    with torch.no_grad():  # larger weights: more events, states cross the surrogate window
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).mul_(scale)
    return cell


def random_masks(density: float, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"weight_hh": torch.rand(3 * H, H, generator=g) < density,
            "weight_ih": torch.rand(3 * H, I, generator=g) < density}


def run_engine(engine, xs, grads):
    engine.reset(xs.size(1))
    for t in range(xs.size(0)):
        engine.step(xs[t])
        if bool(grads[t].ne(0).any()):
            engine.accumulate(grads[t])
    return engine.gradients()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


CASES = [("egru", "subtract_threshold"), ("egru", "subtract_output"), ("egru", "none"),
         ("gru", "none")]


@pytest.mark.parametrize("kind,reset_mode", CASES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("loss_at", ["every", "end"])
@pytest.mark.parametrize("backend", ["gemm", "numba", "torch"])
def test_rtrl_matches_bptt(kind, reset_mode, masked, loss_at, backend):
    cell = make_cell(kind, reset_mode)
    masks = random_masks(0.5) if masked else None
    if masks:
        with torch.no_grad():
            for n, m in masks.items():
                getattr(cell, n).mul_(m)
    g = torch.Generator().manual_seed(2)
    xs = 2 * torch.randn(T, B, I, generator=g, dtype=torch.float64)
    grads = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    if loss_at == "end":
        grads[:-1] = 0
    dense, sparse = DenseRTRL(cell, masks), SparseRTRL(cell, masks, backend=backend)
    assert sparse.backend == backend
    names = dense.spec.param_names
    if kind == "egru":
        assert "threshold_raw" in names
    ref = bptt_gradients(cell, xs, grads, names)
    g_dense = run_engine(dense, xs, grads)
    g_sparse = run_engine(sparse, xs, grads)
    for n in names:
        m = masks.get(n) if masks else None
        expected = ref[n] * m if m is not None else ref[n]
        assert bool(expected.ne(0).any()), n
        assert rel_err(g_dense[n], expected) < TOL, n
        assert rel_err(g_sparse[n], expected) < TOL, n
        if m is not None:
            assert bool((g_sparse[n][~m] == 0).all()) and bool((g_dense[n][~m] == 0).all())
    # the influence matrices agree too
    assert rel_err(sparse.influence(), dense.influence()) < TOL


@pytest.mark.parametrize("kind,reset_mode", CASES)
def test_numba_and_torch_backends_agree(kind, reset_mode):
    """Same influence matrix, gradients and live columns; without masks the same counts, with
    pruned W_hh the numba kernel skips K's structural zeros (fewer Jacobian and update MACs,
    and fewer immediate MACs for threshold columns)."""
    xs = 2 * torch.randn(T, B, I, generator=torch.Generator().manual_seed(6),
                         dtype=torch.float64)
    grads = torch.randn(T, B, H, generator=torch.Generator().manual_seed(7),
                        dtype=torch.float64)
    for masks in (None, random_masks(0.3, seed=8)):
        cell = make_cell(kind, reset_mode)
        nb = SparseRTRL(cell, masks, backend="numba")
        tc = SparseRTRL(cell, masks, backend="torch")
        g_nb, g_tc = run_engine(nb, xs, grads), run_engine(tc, xs, grads)
        for n in g_tc:
            assert rel_err(g_nb[n], g_tc[n]) < TOL, n
        assert rel_err(nb.influence(), tc.influence()) < TOL
        assert list(nb.live) == list(tc.live)
        assert bool((nb.row_nz == tc.row_nz).all())
        s_nb, s_tc = nb.counter.summary(), tc.counter.summary()
        assert s_nb["macs_gradient"] == s_tc["macs_gradient"]
        for key in ("macs_jacobian", "macs_update", "macs_immediate"):
            if masks is None:
                assert s_nb[key] == s_tc[key], key
            elif key == "macs_immediate":   # threshold columns use K's kept rows only
                assert s_nb[key] <= s_tc[key], key
            else:
                assert s_nb[key] < s_tc[key], key
        assert s_nb["active_fraction"] == s_tc["active_fraction"]
        gm = SparseRTRL(cell, masks, backend="gemm")
        g_gm = run_engine(gm, xs, grads)
        for n in g_tc:
            assert rel_err(g_gm[n], g_tc[n]) < TOL, n
        assert rel_err(gm.influence(), tc.influence()) < TOL
        assert list(gm.live) == list(tc.live)           # same live-column bookkeeping
        s_gm = gm.counter.summary()
        assert s_gm["active_fraction"] == s_tc["active_fraction"]
        assert s_gm["macs_total"] < s_gm["dense_macs_total"]


def test_bad_backend_raises_and_auto_choice():
    with pytest.raises(ValueError, match="backend"):
        SparseRTRL(make_cell("gru"), backend="cuda")
    assert SparseRTRL(make_cell("gru")).backend == "numba"          # CPU, small H
    big = GRUCell(I, 96, dtype=torch.float64)
    assert SparseRTRL(big).backend == "gemm"                       # dense K, H >= 96
    assert SparseRTRL(big, backend="torch").backend == "torch"
    g = torch.Generator().manual_seed(0)
    sparse_k = {"weight_hh": torch.rand(3 * 96, 96, generator=g) < 0.1}
    eng = SparseRTRL(big, sparse_k)
    assert eng.k_density < 0.4 and eng.backend == "numba"


def test_events_happen_and_some_units_are_inactive():
    """The exactness test above must cover both fired/in-window and silent units."""
    cell = make_cell("egru")
    xs = 2 * torch.randn(T, B, I, generator=torch.Generator().manual_seed(2),
                         dtype=torch.float64)
    eng = SparseRTRL(cell)
    eng.reset(B)
    fired, inactive = 0.0, 0
    for x in xs:
        eng.step(x)
        fired += float(eng.last.o.sum())
        inactive += int((eng.last.a == 0).sum())
    assert fired > 0 and inactive > 0


def test_pruned_columns_stay_exactly_zero():
    cell = make_cell("egru")
    masks = random_masks(0.3, seed=5)
    masks["bias_hh"] = torch.rand(3 * H, generator=torch.Generator().manual_seed(3)) < 0.5
    xs = 2 * torch.randn(25, B, I, generator=torch.Generator().manual_seed(4),
                         dtype=torch.float64)
    dense = DenseRTRL(cell, masks)
    sparse = SparseRTRL(cell, masks)
    dense.reset(B)
    sparse.reset(B)
    pruned = ~dense.layout.kept
    assert int(pruned.sum()) > 0
    for x in xs:
        dense.step(x)
        sparse.step(x)
        assert bool((dense.M[:, :, pruned] == 0).all())
    assert sparse.M.size(2) == int(dense.layout.kept.sum())
    assert bool(dense.M[:, :, ~pruned].ne(0).any())
    assert rel_err(sparse.influence(), dense.M) < TOL


def test_thresholds_optional_and_fixed_thresholds_excluded():
    cell = make_cell("egru")
    assert "threshold_raw" not in DenseRTRL(cell, train_thresholds=False).spec.param_names
    fixed = EGRUCell(I, H, threshold_learnable=False, dtype=torch.float64)
    assert "threshold_raw" not in SparseRTRL(fixed).spec.param_names


def test_state_carries_over_with_reset_influence():
    """Truncation: after reset_influence the gradient equals BPTT from the carried state."""
    cell = make_cell("egru")
    g = torch.Generator().manual_seed(7)
    xs = 2 * torch.randn(2 * T, B, I, generator=g, dtype=torch.float64)
    grads = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    eng = SparseRTRL(cell)
    eng.reset(B)
    for x in xs[:T]:
        eng.step(x)
    state = eng.state
    eng.reset_influence()
    eng.zero_grad()
    for t in range(T):
        eng.step(xs[T + t])
        eng.accumulate(grads[t])
    ref = bptt_gradients(cell, xs[T:], grads, eng.spec.param_names, state=state)
    for n, v in eng.gradients().items():
        assert rel_err(v, ref[n]) < TOL, n


def test_bad_inputs_raise():
    cell = make_cell("egru")
    with pytest.raises(ValueError, match="shape"):
        SparseRTRL(cell, {"weight_hh": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="bool"):
        SparseRTRL(cell, {"weight_hh": torch.ones(3 * H, H)})
    with pytest.raises(ValueError, match="unknown"):
        DenseRTRL(cell, {"weight_xx": torch.ones(3 * H, H, dtype=torch.bool)})
    eng = SparseRTRL(cell)
    with pytest.raises(ValueError, match="reset"):
        eng.step(torch.zeros(B, I, dtype=torch.float64))
    eng.reset(B)
    with pytest.raises(ValueError, match="shape"):
        eng.step(torch.zeros(B, I + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        eng.step(torch.full((B, I), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="step"):
        eng.accumulate(torch.zeros(B, H, dtype=torch.float64))
    with pytest.raises(ValueError, match="zoneout"):
        DenseRTRL(EGRUCell(I, H, zoneout=0.1))
    with pytest.raises(ValueError, match="supports"):
        DenseRTRL(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("kind,reset_mode", CASES)
@pytest.mark.parametrize("bounds", [(0.5, 2.0), (1e-300, 1e300)])
def test_gemm_lazy_row_scales_stay_exact(monkeypatch, kind, reset_mode, bounds):
    """The gemm backend keeps M = diag(r) N; rows are multiplied out when r leaves the bounds
    (tight bounds: nearly every step; loose: never). Both equal BPTT and the dense M."""
    monkeypatch.setattr(_gemm, "SCALE_MIN", bounds[0])
    monkeypatch.setattr(_gemm, "SCALE_MAX", bounds[1])
    cell = make_cell(kind, reset_mode)
    steps = 40
    g = torch.Generator().manual_seed(11)
    xs = 2 * torch.randn(steps, B, I, generator=g, dtype=torch.float64)
    grads = torch.randn(steps, B, H, generator=g, dtype=torch.float64)
    dense, gm = DenseRTRL(cell), SparseRTRL(cell, backend="gemm")
    ref = bptt_gradients(cell, xs, grads, dense.spec.param_names)
    g_dense, g_gm = run_engine(dense, xs, grads), run_engine(gm, xs, grads)
    for n in ref:
        assert rel_err(g_gm[n], ref[n]) < TOL, n
        assert rel_err(g_dense[n], ref[n]) < TOL, n
    assert rel_err(gm.influence(), dense.M) < TOL
    r = gm.row_scale.abs()
    if bounds[0] == 0.5:
        assert bool(((r >= 0.5) & (r <= 2.0)).all())
    else:
        assert float(r.min()) < 1e-3          # scales shrank over 40 steps, never reset


@pytest.mark.parametrize("kind,reset_mode", CASES)
def test_gemm_without_numba_path_is_exact(kind, reset_mode):
    """The gemm path used off CPU (all kept columns live, index_add_ immediates), run on CPU."""
    cell = make_cell(kind, reset_mode)
    masks = random_masks(0.5)
    with torch.no_grad():
        for n, m in masks.items():
            getattr(cell, n).mul_(m)
    g = torch.Generator().manual_seed(12)
    xs = 2 * torch.randn(T, B, I, generator=g, dtype=torch.float64)
    grads = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    eng = SparseRTRL(cell, masks, backend="gemm")
    eng._gemm_numba = False
    ref = bptt_gradients(cell, xs, grads, eng.spec.param_names)
    got = run_engine(eng, xs, grads)
    assert list(eng.live) == [eng.num_kept] * B
    for n in ref:
        expected = ref[n] * masks[n] if n in masks else ref[n]
        assert rel_err(got[n], expected) < TOL, n


@pytest.mark.parametrize("kind,reset_mode", CASES)
def test_numba_update_chunks_give_bitwise_the_same_influence(kind, reset_mode):
    """The numba update runs over column chunks of M with up to four terms per pass; chunks
    of 1, 5 or 7 columns (many chunk boundaries, partial last chunks) and one chunk give the
    same M and gradients bit for bit, and they equal BPTT."""
    cell = make_cell(kind, reset_mode)
    g = torch.Generator().manual_seed(3)
    xs = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    grads = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    results = {}
    for chunk in (1, 5, 7, 1 << 30):
        engine = SparseRTRL(cell, backend="numba")
        engine.update_chunk = chunk
        results[chunk] = (run_engine(engine, xs, grads), engine.M.clone())
    assert int(results[1 << 30][1].ne(0).sum()) > 0
    assert SparseRTRL(cell, backend="numba").layout.num_columns > 7  # several chunks ran
    for chunk in (1, 5, 7):
        grads_c, m_c = results[chunk]
        assert torch.equal(m_c, results[1 << 30][1])
        for n, v in grads_c.items():
            assert torch.equal(v, results[1 << 30][0][n])
    ref = bptt_gradients(cell, xs, grads, SparseRTRL(cell).spec.param_names)
    assert max(rel_err(results[5][0][n], ref[n]) for n in ref) < TOL
