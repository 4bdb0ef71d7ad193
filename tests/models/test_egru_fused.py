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


def _silence(m: EGRU, units: list[int]) -> None:
    """Drive ``units`` of every layer to c~ = -1 (z ~ 0, g ~ -1): outside the surrogate
    support (width 1 around theta > 0), so their dy is never needed."""
    with torch.no_grad():
        for k, h in enumerate(m.hidden_sizes):
            b = getattr(m, f"bias_ih_l{k}")
            idx = torch.tensor([u for u in units if u < h])
            b[h + idx] = -40.0  # z
            b[2 * h + idx] = -40.0  # g


@pytest.mark.parametrize("reset", ["subtract_threshold", "subtract_output"])
@pytest.mark.parametrize("shape", ["triangle", "rectangle"])
def test_sparse_backward_equals_reference(reset, shape, monkeypatch):
    """Forcing the column-skipping path (sparse_density=1) gives the reference gradients."""
    import dualsparse.models.egru as egru_mod
    from dualsparse.models import egru_fused

    fused, ref = _pair(reset_mode=reset, surrogate=shape)
    _silence(fused, [0, 2, 3])
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(9, 3, 5, dtype=torch.float64)
    seqs = fused(x, return_sequences=True)[2]
    need = egru_fused.needed_units(seqs[0].events, seqs[0].internal, fused.threshold(0),
                                   fused.surrogate)
    assert not need[:, :, [0, 2, 3]].any() and need.any()
    cols, columns = [], egru_fused._columns

    def spy(mask, density):
        cols.append(columns(mask, density))
        return cols[-1]

    monkeypatch.setattr(egru_fused, "_columns", spy)
    monkeypatch.setattr(egru_mod, "egru_sequence",
                        lambda *a, **k: egru_fused.egru_sequence(*a, **k, sparse_density=1.0))
    a = _run(fused, x, None, seed=11)[3]
    b = _run(ref, x, None, seed=11)[3]
    assert cols and all(c is not None and c.numel() < 6 for c in cols)  # the skip path ran
    for name, g in b.items():
        assert torch.allclose(a[name], g, rtol=1e-10, atol=1e-12), name
    assert a["weight_hh_l0"][:, [0, 2, 3]].abs().sum() == 0  # silent units get no dW column


def test_sparse_density_zero_is_dense_and_fast_sigmoid_never_skips():
    from dualsparse.models.egru_fused import needed_units
    from dualsparse.models.surrogate import Surrogate

    c = torch.tensor([[[-5.0, 0.2, 3.0]]])
    o = (c > 0.3).double()
    assert needed_units(o, c, torch.tensor(0.3), Surrogate("triangle")).tolist() == \
        [[[False, True, True]]]
    assert needed_units(o, c, torch.tensor(0.3), Surrogate("fast_sigmoid")).all()
    with pytest.raises(ValueError, match="sparse_density"):
        from dualsparse.models.egru_fused import egru_sequence
        z = torch.zeros(1, 3)
        egru_sequence(torch.zeros(2, 1, 9), z, z, torch.zeros(9, 3), None, torch.ones(3),
                      None, Surrogate(), "none", sparse_density=1.5)


def test_autocast_runs_the_recurrence_in_the_weights_dtype():
    """Under AMP the fused layer takes half inputs and computes as without autocast."""
    from dualsparse.models.egru_fused import egru_sequence
    from dualsparse.models.surrogate import Surrogate

    g = torch.Generator().manual_seed(0)
    gi = torch.randn(5, 2, 18, generator=g).bfloat16()
    z = torch.zeros(2, 6)
    w, b = torch.randn(18, 6, generator=g) * 0.5, torch.randn(18, generator=g)
    th = torch.full((6,), 0.2)
    ref = egru_sequence(gi.float(), z, z, w, b, th, None, Surrogate(), "subtract_threshold")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = egru_sequence(gi, z, z, w, b, th, None, Surrogate(), "subtract_threshold")
    for a, r in zip(got, ref, strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, r)
