"""Triton kernels compiled on CUDA: EGRU layer forward/backward against the PyTorch fused layer,
sparse backward, event-driven batch-1 inference against cuBLAS."""

from __future__ import annotations

import pytest
import torch

from dualsparse.models import EGRU
from dualsparse.models.egru_fused import egru_sequence
from dualsparse.models.surrogate import Surrogate


def _inputs(steps, batch, h, dtype, seed=0, silent=0):
    g = torch.Generator().manual_seed(seed)
    gi = torch.randn(steps, batch, 3 * h, generator=g, dtype=dtype)
    gi[:, :, h:h + silent] = -40.0  # z ~ 0 and g ~ -1: units outside the surrogate support
    gi[:, :, 2 * h:2 * h + silent] = -40.0
    y0 = torch.rand(batch, h, generator=g, dtype=dtype)
    y0[:, :silent] = 0.0
    args = [gi, y0, torch.randn(batch, h, generator=g, dtype=dtype),
            torch.randn(3 * h, h, generator=g, dtype=dtype) / h ** 0.5,
            torch.randn(3 * h, generator=g, dtype=dtype),
            torch.rand(h, generator=g, dtype=dtype) * 0.5]
    return [a.cuda().requires_grad_() for a in args]


def _grads(fn, args, keep, reset, **kw):
    outs = fn(*args, keep, Surrogate(), reset, **kw)
    loss = sum((o * torch.linspace(0.1, 1, o.numel(), device=o.device, dtype=o.dtype)
                .view_as(o)).sum() for o in outs)
    return outs, torch.autograd.grad(loss, args)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
@pytest.mark.parametrize("reset", ["subtract_threshold", "subtract_output", "none"])
def test_triton_layer_equals_pytorch_fused(triton_compiled, dtype, tol, reset):
    args = _inputs(16, 37, 150, dtype)
    keep = (torch.rand(16, 37, 150, device="cuda") < 0.1).to(dtype)
    ref_out, ref_g = _grads(egru_sequence, args, keep, reset)
    out, g = _grads(triton_compiled.triton_egru_sequence, args, keep, reset)
    mismatch = (out[1] != ref_out[1]).double().mean().item()
    assert mismatch < 1e-3  # float32: a rare threshold tie may flip an event
    if dtype == torch.float64:
        for a, b in zip((*out, *g), (*ref_out, *ref_g), strict=True):
            assert torch.allclose(a, b, rtol=tol, atol=tol)
    else:
        for a, b in zip(g, ref_g, strict=True):
            assert (a - b).norm() <= tol * 50 * b.norm() + 1e-6


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_triton_sparse_backward_skips_and_keeps_gradients(triton_compiled, dtype, tol):
    args = _inputs(12, 16, 256, dtype, silent=192)
    fn = triton_compiled.triton_egru_sequence
    tiles: dict = {}
    _, g_tiles = _grads(fn, args, None, "subtract_threshold", stats=tiles)
    gather: dict = {}
    _, g_gather = _grads(fn, args, None, "subtract_threshold", stats=gather,
                         backward_matmul="cublas")
    _, g_gather2 = _grads(fn, args, None, "subtract_threshold", backward_matmul="cublas")
    cublas: dict = {}
    _, g_cublas = _grads(fn, args, None, "subtract_threshold", stats=cublas,
                         backward_matmul="cublas", sparse_backward=False)
    _, g_dense = _grads(fn, args, None, "subtract_threshold", sparse_backward=False)
    assert tiles["path"] == "tiles" and gather["path"] == "cublas_gather"
    assert cublas["path"] == "cublas_dense"
    assert tiles["skipped_tiles"] >= 0.7  # 192 of 256 units silent: 6 of 8 unit tiles
    assert gather["needed_fraction"] <= 0.25 and gather["weight_columns"] <= 0.25
    for a, b, c, d in zip(g_tiles, g_gather, g_cublas, g_dense, strict=True):
        for got in (a, b, c):
            assert torch.allclose(got, d, rtol=tol, atol=tol)
    for a, b in zip(g_gather, g_gather2, strict=True):
        assert torch.equal(a, b)  # deterministic


def test_egru_backend_triton_trains_like_torch(triton_compiled):
    torch.manual_seed(0)
    ref = EGRU(20, [64, 48], threshold_mean=0.2).cuda()
    tri = EGRU(20, [64, 48], threshold_mean=0.2, backend="triton").cuda()
    tri.load_state_dict(ref.state_dict())
    x = torch.randn(10, 8, 20, device="cuda")
    grads = []
    for m in (ref, tri):
        out, _ = m(x)
        grads.append(torch.autograd.grad(out.square().sum(), list(m.parameters())))
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)


def test_event_inference_equals_cublas(triton_compiled):
    from dualsparse.engine import triton_events

    torch.manual_seed(0)
    h = 1350
    w = torch.randn(3 * h, h, device="cuda") / h ** 0.5
    y = torch.randn(h, device="cuda") * (torch.rand(h, device="cuda") < 0.2)
    for split_k in (False, True):
        got = triton_events.event_matvec(y, w.t().contiguous(), block_n=128, block_k=32,
                                         split_k=split_k)
        assert torch.allclose(got, w @ y, rtol=1e-4, atol=1e-4), split_k
    model = EGRU(32, [h, 256], threshold_mean=0.2).cuda().eval()
    x = torch.randn(6, 1, 32, device="cuda")
    with torch.no_grad():
        ref = model(x)[0][:, 0]
    stream = triton_events.TritonEventEGRU(model)
    out = torch.stack([stream.step(x[t, 0]) for t in range(6)])
    assert torch.allclose(out, ref, atol=1e-4)
