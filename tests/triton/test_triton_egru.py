"""Triton EGRU layer kernels (forward + BPTT, sparse backward) against the PyTorch fused
layer, in float64 under Triton's interpreter (see conftest.py)."""

from __future__ import annotations

import pytest
import torch

from dualsparse.models import EGRU
from dualsparse.models.egru_fused import egru_sequence, needed_units
from dualsparse.models.surrogate import Surrogate
from dualsparse.models.triton_egru import Blocks, triton_egru_sequence

SMALL = Blocks(batch=16, hidden=16, k=16)  # H = 20 gives two unit tiles and a partial K block


def _inputs(steps=4, batch=3, h=20, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    theta = (torch.rand(h, generator=g, dtype=dtype) * 0.5).requires_grad_()
    return [rnd(steps, batch, 3 * h), torch.rand(batch, h, generator=g, dtype=dtype)
            .requires_grad_(), rnd(batch, h), rnd(3 * h, h, scale=0.4), rnd(3 * h), theta]


def _grads(fn, args, keep, surrogate, reset, **kw):
    gi, y0, c0, w, b, th = args
    outs = fn(gi, y0, c0, w, b, th, keep, surrogate, reset, **kw)
    weights = [torch.linspace(0.1, 1.0, o.numel(), dtype=o.dtype).view_as(o) for o in outs]
    loss = sum((o * wt).sum() for o, wt in zip(outs, weights, strict=True))
    params = [a for a in args if a is not None]
    return outs, torch.autograd.grad(loss, params)


PATHS = [("fused", 0.5, "tiles"), ("cublas", 1.0, "cublas_gather"), ("cublas", 0.0, "cublas_dense")]
"""(backward_matmul, sparse_density, the path the backward takes) for these small inputs."""


@pytest.mark.parametrize("method,sparse_density,path", PATHS)
@pytest.mark.parametrize("reset,keep,shape", [
    ("subtract_threshold", None, "triangle"),
    ("subtract_threshold", "mask", "rectangle"),
    ("subtract_output", 0.3, "triangle"),
    ("subtract_output", "mask", "fast_sigmoid"),
    ("none", None, "rectangle"),
    ("none", 0.3, "fast_sigmoid"),
])
def test_forward_and_gradients_equal_the_pytorch_layer(reset, keep, shape, method,
                                                       sparse_density, path):
    args = _inputs()
    if keep == "mask":
        keep = (torch.rand(4, 3, 20, generator=torch.Generator().manual_seed(5)) < 0.3).double()
    sur = Surrogate(shape, gamma=0.9, width=0.8)
    ref_out, ref_g = _grads(egru_sequence, args, keep, sur, reset)
    stats: dict = {}
    out, g = _grads(triton_egru_sequence, args, keep, sur, reset, blocks=SMALL, stats=stats,
                    sparse_density=sparse_density, backward_matmul=method)
    assert stats["path"] == path
    for a, b in zip(out, ref_out, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
    assert ref_out[1].sum() > 0 and (ref_out[1] == 0).any()  # some events, not all
    for name, a, b in zip("gi y0 c0 w_hh b_hh theta".split(), g, ref_g, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), name


def test_without_bias_and_default_blocks():
    gi, y0, c0, w, _, th = _inputs(steps=3, batch=2, h=24)
    args = [gi, y0, c0, w, None, th]
    ref_out, ref_g = _grads(egru_sequence, args, None, Surrogate(), "subtract_threshold")
    out, g = _grads(triton_egru_sequence, args, None, Surrogate(), "subtract_threshold")
    for a, b in zip((*out, *g), (*ref_out, *ref_g), strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_float32_inputs_run_in_float32():
    args = [a.detach().float().requires_grad_() for a in _inputs()]
    ref_out, ref_g = _grads(egru_sequence, args, None, Surrogate(), "subtract_threshold")
    out, g = _grads(triton_egru_sequence, args, None, Surrogate(), "subtract_threshold",
                    blocks=SMALL)
    assert all(t.dtype == torch.float32 for t in (*out, *g))
    assert torch.equal(out[1], ref_out[1])
    for a, b in zip(g, ref_g, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("reset", ["subtract_threshold", "subtract_output"])
def test_sparse_backward_skips_silent_tiles_with_the_same_gradients(reset):
    """Units 0..15 (the first unit tile) are held at c~ = -1, outside the support: the
    backward step kernel skips that tile's matmul in every step; gradients are unchanged."""
    gi, y0, c0, w, b, th = _inputs(steps=5, batch=3, h=32, seed=2)
    with torch.no_grad():
        y0[:, :16] = 0.0
        for gate in (1, 2):  # z ~ 0, g ~ -1 for the silent units (input projection)
            gi[:, :, gate * 32:gate * 32 + 16] = -40.0
    args = [gi, y0, c0, w, b, th]
    sur = Surrogate()
    stats: dict = {}
    out, g_sparse = _grads(triton_egru_sequence, args, None, sur, reset, blocks=SMALL,
                           stats=stats)
    need = needed_units(out[1], out[2], th, sur)
    assert not need[:, :, :16].any() and need[:, :, 16:].any()
    assert stats["path"] == "tiles"
    assert stats["skipped_tiles"] == pytest.approx(0.5)  # one of the two unit tiles
    dense_stats: dict = {}
    _, g_dense = _grads(triton_egru_sequence, args, None, sur, reset, blocks=SMALL,
                        sparse_backward=False, stats=dense_stats)
    assert dense_stats["path"] == "dense" and dense_stats["weight_columns"] == 1.0
    gather_stats: dict = {}  # default sparse_density 0.5: half the units are needed
    _, g_gather = _grads(triton_egru_sequence, args, None, sur, reset, blocks=SMALL,
                         stats=gather_stats, backward_matmul="cublas")
    assert gather_stats["path"] == "cublas_gather"
    assert 0.3 < gather_stats["needed_fraction"] <= 0.5  # the silent half is never needed
    assert 0.3 < gather_stats["weight_columns"] <= 0.5  # nor fires
    _, g_ref = _grads(egru_sequence, args, None, sur, reset)
    for a, d, cb, r in zip(g_sparse, g_dense, g_gather, g_ref, strict=True):
        assert torch.allclose(a, d, rtol=1e-10, atol=1e-12)
        for got in (a, cb):
            assert torch.allclose(got, r, rtol=1e-10, atol=1e-12)


def test_gathered_backward_with_scattered_units():
    """Every third unit silent, others at varying distances from threshold: the needed units
    are scattered and change from step to step (more than one tile of them in some steps)."""
    gi, y0, c0, w, b, th = _inputs(steps=6, batch=5, h=40, seed=3)
    silent = torch.arange(0, 40, 3)
    with torch.no_grad():
        y0[:, silent] = 0.0
        for gate in (1, 2):
            gi[:, :, gate * 40 + silent] = -40.0
    args = [gi, y0, c0, w, b, th]
    sur = Surrogate("triangle", gamma=0.5, width=0.3)
    stats: dict = {}
    out, g = _grads(triton_egru_sequence, args, None, sur, "subtract_threshold",
                    blocks=SMALL, stats=stats, sparse_density=1.0, backward_matmul="cublas")
    need = needed_units(out[1], out[2], th, sur)[:-1].any(1)
    assert stats["path"] == "cublas_gather" and 0.2 < stats["needed_fraction"] < 0.67
    assert not need[:, silent].any()
    assert (need.sum(1) > 16).any()  # more than one tile of needed units in some step
    assert len(set(map(tuple, need.tolist()))) > 1  # the needed set changes over time
    _, g_ref = _grads(egru_sequence, args, None, sur, "subtract_threshold")
    for name, a, r in zip("gi y0 c0 w_hh b_hh theta".split(), g, g_ref, strict=True):
        assert torch.allclose(a, r, rtol=1e-10, atol=1e-12), name


def test_gathered_backward_when_no_unit_is_ever_needed():
    gi, y0, c0, w, b, th = _inputs(steps=4, batch=2, h=20, seed=4)
    with torch.no_grad():
        y0.zero_()
        gi[:, :, 20:] = -40.0  # every unit silent and far below threshold
    args = [gi, y0, c0, w, b, th]
    stats: dict = {}
    _, g = _grads(triton_egru_sequence, args, None, Surrogate(), "subtract_threshold",
                  blocks=SMALL, stats=stats, backward_matmul="cublas")
    assert stats["path"] == "cublas_gather" and stats["dy_columns"] == 0.0
    _, g_ref = _grads(egru_sequence, args, None, Surrogate(), "subtract_threshold")
    for a, r in zip(g, g_ref, strict=True):
        assert torch.allclose(a, r, rtol=1e-10, atol=1e-12)


def test_sparse_density_is_checked():
    args = _inputs()
    with pytest.raises(ValueError, match="sparse_density"):
        triton_egru_sequence(*args, None, Surrogate(), "none", sparse_density=1.5)
    with pytest.raises(ValueError, match="backward_matmul"):
        triton_egru_sequence(*args, None, Surrogate(), "none", backward_matmul="cudnn")


def test_argument_errors_name_the_argument():
    gi, y0, c0, w, b, th = _inputs()
    with pytest.raises(ValueError, match="reset_mode"):
        triton_egru_sequence(gi, y0, c0, w, b, th, None, Surrogate(), "sometimes")
    with pytest.raises(ValueError, match="w_hh"):
        triton_egru_sequence(gi, y0, c0, w[:, :5], b, th, None, Surrogate(), "none")
    with pytest.raises(ValueError, match="Blocks.hidden"):
        Blocks(hidden=24)
    with pytest.raises(ValueError, match="Blocks.k"):
        Blocks(k=8)


def test_egru_module_backend_triton_matches_torch():
    torch.manual_seed(0)
    ref = EGRU(5, [20, 12], dtype=torch.float64, threshold_mean=0.2)
    tri = EGRU(5, [20, 12], dtype=torch.float64, threshold_mean=0.2, backend="triton")
    tri.load_state_dict(ref.state_dict())
    x = torch.randn(6, 2, 5, dtype=torch.float64)
    grads = []
    for m in (ref, tri):
        out, _ = m(x)
        grads.append(torch.autograd.grad(out.square().sum(), list(m.parameters())))
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_backend_choice_is_checked_and_auto_keeps_cpu_on_torch():
    from dualsparse.models.egru_fused import uses_triton

    with pytest.raises(ValueError, match="backend"):
        EGRU(3, 4, backend="cuda")
    assert not uses_triton("auto", torch.device("cpu"))
    assert EGRU(3, 4).backend == "auto"  # Triton on CUDA by default, PyTorch on CPU
    assert uses_triton("triton", torch.device("cpu")) and not uses_triton("torch",
                                                                          torch.device("cuda"))
