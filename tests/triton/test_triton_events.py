"""Triton event-driven batch-1 inference kernels against PyTorch, under Triton's interpreter
(see conftest.py)."""

from __future__ import annotations

import importlib

import pytest
import torch

from dualsparse.models import EGRU
from dualsparse.models.egru import egru_step
from dualsparse.models.surrogate import Surrogate


@pytest.fixture
def ev():
    # triton (optional, heavy) is imported by this module; conftest has set interpreter mode
    return importlib.import_module("dualsparse.engine.triton_events")


@pytest.mark.parametrize("split_k", [False, True], ids=["rows", "split-k"])
@pytest.mark.parametrize("activity", [0.0, 0.1, 1.0])
def test_event_matvec_equals_dense_matvec(ev, activity, split_k):
    g = torch.Generator().manual_seed(0)
    k, n = 70, 45
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g)
    b_before = b.clone()
    y = torch.randn(k, generator=g) * (torch.rand(k, generator=g) < activity)
    if activity < 1:
        y[:32] = 0.0  # a whole input block without events: skipped
    got = ev.event_matvec(y, w.t().contiguous(), b, block_n=16, block_k=16, split_k=split_k)
    assert torch.allclose(got, torch.addmv(b, w, y), rtol=1e-5, atol=1e-5)
    got = ev.event_matvec(y, w.t().contiguous(), block_n=16, block_k=16, split_k=split_k)
    assert torch.allclose(got, w @ y, rtol=1e-5, atol=1e-5)
    assert torch.equal(b, b_before)  # the split-k bias is copied, never written


@pytest.mark.parametrize("reset,zoneout", [("subtract_threshold", 0.0),
                                           ("subtract_output", 0.2), ("none", 0.0)])
def test_egru_event_step_equals_egru_step(ev, reset, zoneout):
    g = torch.Generator().manual_seed(1)
    h = 40
    w = torch.randn(3 * h, h, generator=g) * 0.3
    b = torch.randn(3 * h, generator=g)
    gi = torch.randn(3 * h, generator=g)
    theta = torch.rand(h, generator=g) * 0.4
    c = torch.randn(h, generator=g)
    y = torch.relu(c - 0.5)  # sparse previous output
    ref = egru_step(gi[None], y[None], c[None], w, b, theta, Surrogate(), reset)
    c_ref = zoneout * c + (1 - zoneout) * ref.c[0] if zoneout else ref.c[0]
    y_new, c_new = ev.egru_event_step(gi, y, c, w.t().contiguous(), b, theta, reset, zoneout)
    assert torch.allclose(y_new, ref.y[0], atol=1e-5) and torch.allclose(c_new, c_ref, atol=1e-5)
    assert (y_new == 0).any() and (y_new != 0).any()


def test_streaming_egru_equals_the_module(ev):
    torch.manual_seed(2)
    model = EGRU(6, [40, 24], threshold_mean=0.2, zoneout=0.1).eval()
    x = torch.randn(5, 1, 6)
    with torch.no_grad():
        ref, _ = model(x)
    stream = ev.TritonEventEGRU(model)
    got = torch.stack([stream.step(x[t, 0]) for t in range(5)])
    assert torch.allclose(got, ref[:, 0], atol=1e-5)
    assert (got == 0).any()
    stream.reset()
    assert torch.allclose(stream.step(x[0, 0]), ref[0, 0], atol=1e-5)


def test_errors_name_the_argument(ev):
    with pytest.raises(ValueError, match="float32"):
        ev.event_matvec(torch.zeros(4, dtype=torch.float64), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="w_t"):
        ev.event_matvec(torch.zeros(4), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="w_hh_t"):
        ev.egru_event_step(torch.zeros(12), torch.zeros(4), torch.zeros(4), torch.zeros(4, 4),
                           None, torch.zeros(4))
    with pytest.raises(ValueError, match="reset_mode"):
        ev.egru_event_step(torch.zeros(12), torch.zeros(4), torch.zeros(4), torch.zeros(4, 12),
                           None, torch.zeros(4), "later")
    with pytest.raises(ValueError, match="events=True"):
        ev.TritonEventEGRU(EGRU(3, 4, events=False))
