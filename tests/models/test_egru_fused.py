"""The fused EGRU layer (hand-written BPTT) equals the autograd reference in float64."""

import pytest
import torch

from dualsparse.models import EGRU
from dualsparse.models.regularizers import activity_penalty


def _pair(**kw):
    torch.manual_seed(3)
    fused = EGRU(5, [6, 4], dtype=torch.float64, threshold_mean=0.15, fused=True, **kw)
    ref = EGRU(5, [6, 4], dtype=torch.float64, threshold_mean=0.15, fused=False, **kw)
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def _run(m, x, state, seed):
    m.zero_grad()
    torch.manual_seed(seed)
    out, st, seqs = m(x, state, return_sequences=True)
    loss = (out ** 2).sum() + sum(s.c.sum() + 0.3 * s.y.sum() for s in st)
    loss = loss + activity_penalty([s.events for s in seqs], 0.7)
    loss = loss + sum((s.internal ** 2).mean() for s in seqs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    return out, st, seqs, grads


@pytest.mark.parametrize("reset", ["subtract_threshold", "subtract_output", "none"])
@pytest.mark.parametrize("zoneout,train", [(0.0, True), (0.3, True), (0.3, False)])
def test_fused_equals_reference(reset, zoneout, train):
    fused, ref = _pair(reset_mode=reset, zoneout=zoneout)
    fused.train(train)
    ref.train(train)
    x = torch.randn(9, 3, 5, dtype=torch.float64) * 1.5
    state = tuple(type(s)(torch.rand_like(s.y) * 0.5, torch.randn_like(s.c))
                  for s in fused.init_state(3, dtype=torch.float64))
    a = _run(fused, x, state, seed=11)
    b = _run(ref, x, state, seed=11)
    assert torch.allclose(a[0], b[0], rtol=0, atol=1e-12)
    for sa, sb in zip(a[1], b[1], strict=True):
        assert torch.allclose(sa.y, sb.y, atol=1e-12) and torch.allclose(sa.c, sb.c, atol=1e-12)
    for qa, qb in zip(a[2], b[2], strict=True):
        assert torch.equal(qa.events, qb.events)
        assert torch.allclose(qa.internal, qb.internal, atol=1e-12)
    for name, g in a[3].items():
        assert torch.allclose(g, b[3][name], rtol=1e-10, atol=1e-12), name
    assert a[3]["threshold_raw_l0"].abs().sum() > 0


def test_fused_gradient_wrt_inputs_and_initial_state_without_bias():
    fused, ref = _pair(bias=False)
    x = torch.randn(6, 2, 5, dtype=torch.float64, requires_grad=True)
    y0 = torch.rand(2, 6, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    grads = []
    for m in (fused, ref):
        st = (type(m.init_state(1)[0])(y0, c0), m.init_state(2, dtype=torch.float64)[1])
        out, _ = m(x, st)
        grads.append(torch.autograd.grad(out.sin().sum(), (x, y0, c0)))
    for ga, gb in zip(*grads, strict=True):
        assert torch.allclose(ga, gb, rtol=1e-10, atol=1e-12)
