import pytest
import torch
import torch.nn.functional as F

from dualsparse.models import EGRU, EGRUCell, EGRUState, egru_step
from dualsparse.models.regularizers import activity_penalty
from dualsparse.models.surrogate import Surrogate, smooth_step, straight_through_heaviside

RESETS = ["subtract_threshold", "subtract_output", "none"]


def _cell(reset="subtract_threshold", dtype=torch.float64, **kw):
    torch.manual_seed(0)
    return EGRUCell(4, 5, reset_mode=reset, dtype=dtype, threshold_mean=0.2, **kw)


@pytest.mark.parametrize("reset", RESETS)
def test_gradcheck_cell_with_smooth_surrogate_event(reset):
    """gradcheck in float64: with the smooth step S (S' = surrogate) as event function, the
    analytic gradients of the whole cell (inputs, state, weights, thresholds) are exact."""
    cell = _cell(reset)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y0 = torch.rand(3, 5, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    params = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh, cell.threshold_raw]

    def f(x, y0, c0, *ps):
        cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh, cell.threshold_raw = (
            torch.nn.Parameter(p) if not isinstance(p, torch.nn.Parameter) else p for p in ps)
        res = cell.step(x, EGRUState(y0, c0), event_fn=smooth_step)
        return res.y, res.c

    def g(x, y0, c0, *ps):
        w_ih, w_hh, b_ih, b_hh, raw = ps
        theta = torch.sigmoid(raw)
        res = egru_step(F.linear(x, w_ih, b_ih), y0, c0, w_hh, b_hh, theta, cell.surrogate,
                        reset, True, smooth_step)
        return res.y, res.c

    inputs = (x, y0, c0, *[p.detach().clone().requires_grad_(True) for p in params])
    assert torch.autograd.gradcheck(g, inputs, eps=1e-6, atol=1e-7)
    # and the cell module computes the same thing as the functional form
    out_cell = cell.step(x, EGRUState(y0, c0), event_fn=smooth_step)
    out_fn = g(*inputs)
    assert torch.allclose(out_cell.y, out_fn[0]) and torch.allclose(out_cell.c, out_fn[1])


@pytest.mark.parametrize("reset", RESETS)
def test_surrogate_gradient_matches_straight_through_reference(reset):
    """Hard events: gradients through `heaviside` (custom autograd) over 8 steps equal the
    plain-autograd straight-through reference H + S - S.detach() to 1e-12 (float64)."""
    cell = _cell(reset)
    xs = torch.randn(8, 3, 4, dtype=torch.float64) * 2

    def run(event_fn):
        cell.zero_grad()
        state, loss = None, 0.0
        for x in xs:
            res = cell.step(x, state, event_fn=event_fn) if event_fn else cell.step(x, state)
            state = EGRUState(res.y, res.c)
            loss = loss + (res.y ** 2).sum() + res.c.sum()
        loss.backward()
        return [p.grad.clone() for p in cell.parameters()]

    ours = run(None)
    ref = run(straight_through_heaviside)
    for a, b in zip(ours, ref, strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    assert cell.threshold_raw.grad is not None and cell.threshold_raw.grad.abs().sum() > 0


def test_step_equations_by_hand():
    cell = _cell("subtract_threshold")
    x, y, c = torch.randn(2, 4, dtype=torch.float64), torch.zeros(2, 5,
                                                                 dtype=torch.float64), torch.randn(
        2, 5, dtype=torch.float64)
    res = cell.step(x, EGRUState(y, c))
    gi = x @ cell.weight_ih.T + cell.bias_ih
    gh = y @ cell.weight_hh.T + cell.bias_hh
    r = torch.sigmoid(gi[:, :5] + gh[:, :5])
    z = torch.sigmoid(gi[:, 5:10] + gh[:, 5:10])
    g = torch.tanh(gi[:, 10:] + r * gh[:, 10:])
    ct = z * c + (1 - z) * g
    o = (ct > cell.threshold).double()
    assert torch.allclose(res.c_tilde, ct)
    assert torch.equal(res.events, o)
    assert torch.allclose(res.y, o * ct)
    assert torch.allclose(res.c, ct - o * cell.threshold)


def test_subtract_output_is_the_paper_form():
    cell = _cell("subtract_output")
    x = torch.randn(2, 4, dtype=torch.float64)
    y = torch.rand(2, 5, dtype=torch.float64)
    c = torch.randn(2, 5, dtype=torch.float64)
    res = cell.step(x, EGRUState(y, c))
    ref = _cell("none").step(x, EGRUState(y, c))  # same weights (same seed), no reset term
    assert torch.allclose(res.c_tilde, ref.c_tilde - y)
    assert torch.allclose(res.c, res.c_tilde)


def _egru(**kw):
    torch.manual_seed(1)
    return EGRU(6, [7, 5], threshold_mean=0.1, **kw)


@pytest.mark.parametrize("reset", RESETS)
def test_chunked_run_with_carried_state_equals_whole(reset):
    m = _egru(reset_mode=reset, zoneout=0.3).eval()
    x = torch.randn(12, 3, 6)
    out, st = m(x)
    o1, s1 = m(x[:5])
    o2, s2 = m(x[5:], s1)
    assert torch.allclose(torch.cat([o1, o2]), out, atol=1e-6)
    for a, b in zip(s2, st, strict=True):
        assert torch.allclose(a.y, b.y, atol=1e-6) and torch.allclose(a.c, b.c, atol=1e-6)
    # the internal state c really is carried: dropping it changes the result
    o2_bad, _ = m(x[5:], tuple(EGRUState(s.y, torch.zeros_like(s.c)) for s in s1))
    assert not torch.allclose(o2_bad, o2)


def test_module_matches_cells_stepped_by_hand():
    m = _egru().eval()
    x = torch.randn(9, 2, 6)
    out, _, seqs = m(x, return_sequences=True)
    layer_in = x
    for k in range(2):
        cell = EGRUCell.from_layer(m, k).eval()
        state, ys = None, []
        for t in range(x.size(0)):
            y, state = cell(layer_in[t], state)
            ys.append(y)
        layer_in = torch.stack(ys)
        assert torch.allclose(layer_in, seqs[k].output, atol=1e-6)
    assert torch.allclose(layer_in, out, atol=1e-6)
    cell = EGRUCell.from_layer(m, 0)
    assert cell.weight_hh is m.weight_hh_l0  # shared, not copied


def test_sequences_are_consistent_and_sparse():
    m = _egru()
    x = torch.randn(10, 4, 6)
    out, _, seqs = m(x, return_sequences=True)
    for k, s in enumerate(seqs):
        assert set(s.events.unique().tolist()) <= {0.0, 1.0}
        assert torch.allclose(s.output, s.events * s.internal)
        fired = s.internal > m.threshold(k)
        assert torch.equal(fired, s.events.bool())
    assert 0 < float((out != 0).float().mean()) < 1


def test_batch_first_and_unbatched_agree_with_time_first():
    m = _egru()
    x = torch.randn(8, 3, 6)
    out, st = m(x)
    mb = _egru(batch_first=True)
    outb, stb = mb(x.transpose(0, 1))
    assert torch.allclose(outb.transpose(0, 1), out, atol=1e-6)
    out1, st1 = m(x[:, 1])
    assert out1.shape == (8, 5) and st1[0].y.shape == (7,)
    assert torch.allclose(out1, out[:, 1], atol=1e-6)
    y, st_step = m.step(x[0])
    assert torch.allclose(y, out[0], atol=1e-6)


def test_finite_over_long_sequences_with_large_inputs():
    m = _egru(reset_mode="subtract_output")
    x = torch.randn(300, 2, 6) * 50
    out, st, seqs = m(x, return_sequences=True)
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(s.c).all() and torch.isfinite(s.y).all() for s in st)
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_thresholds_initialisation_range_and_learnable_flag():
    torch.manual_seed(0)
    m = EGRU(3, 4000, threshold_mean=0.3)
    theta = m.threshold(0)
    assert 0 < theta.min() and theta.max() < 1
    assert abs(theta.mean().item() - 0.3) < 0.01
    c = EGRU(3, 10, threshold_init="constant", threshold_mean=0.25)
    assert torch.allclose(c.threshold(0), torch.full((10,), 0.25), atol=1e-6)
    frozen = EGRU(3, 10, threshold_learnable=False)
    assert "threshold_raw_l0" in dict(frozen.named_buffers())
    assert "threshold_raw_l0" not in dict(frozen.named_parameters())
    r = EGRU(3, 10, threshold_range=(0.5, 2.0), threshold_mean=1.0)
    assert (r.threshold(0) > 0.5).all() and (r.threshold(0) < 2.0).all()
    r.set_threshold(0, 1.5)
    assert torch.allclose(r.threshold(0), torch.full((10,), 1.5), atol=1e-5)
    with pytest.raises(ValueError, match="inside"):
        r.set_threshold(0, 3.0)


def test_zoneout_eval_is_the_expectation_and_train_is_random():
    torch.manual_seed(0)
    m = EGRU(4, 6, zoneout=0.4, dtype=torch.float64).eval()
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    out, _ = m(x)
    y = c = torch.zeros(2, 6, dtype=torch.float64)
    for t in range(5):
        res = egru_step(F.linear(x[t], m.weight_ih_l0, m.bias_ih_l0), y, c, m.weight_hh_l0,
                        m.bias_hh_l0, m.threshold(0), m.surrogate)
        y, c = res.y, 0.4 * c + 0.6 * res.c
        assert torch.allclose(out[t], y)
    m.train()
    a, _ = m(x)
    b, _ = m(x)
    assert not torch.equal(a, b)


def test_dropconnect_uses_one_mask_per_forward():
    torch.manual_seed(0)
    m = EGRU(4, 6, dropconnect=0.5, threshold_mean=0.1)
    ref = EGRU(4, 6, threshold_mean=0.1)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(7, 3, 4)
    torch.manual_seed(42)
    out, _ = m(x)
    torch.manual_seed(42)
    dropped = F.dropout(ref.weight_hh_l0.detach(), 0.5, True)
    with torch.no_grad():
        ref.weight_hh_l0.copy_(dropped)
    out_ref, _ = ref(x)
    assert torch.allclose(out, out_ref, atol=1e-6)
    m.eval()
    ref.load_state_dict(m.state_dict())
    assert torch.allclose(m(x)[0], ref(x)[0])


def test_activity_penalty_reaches_the_weights():
    m = _egru()
    out, _, seqs = m(torch.randn(6, 2, 6), return_sequences=True)
    loss = activity_penalty([s.events for s in seqs], 0.5)
    loss.backward()
    assert m.weight_ih_l0.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=">= 0"):
        activity_penalty([s.events for s in seqs], -1.0)


def test_activity_target_spares_the_layers_that_are_sparse_enough():
    sparse = torch.zeros(4, 2, 10)
    sparse[:, :, :1] = 1.0  # fires 10% of the time
    dense = torch.zeros(4, 2, 10)
    dense[:, :, :6] = 1.0  # 60%
    sparse.requires_grad_(True)
    dense.requires_grad_(True)
    loss = activity_penalty([sparse, dense], 2.0, target=0.25)
    loss.backward()
    assert loss.item() > 0
    assert sparse.grad.abs().sum() == 0 and dense.grad.abs().sum() > 0
    assert activity_penalty([sparse, dense], 2.0, target=0.7).item() == 0.0
    assert activity_penalty([sparse, dense], 2.0).item() > loss.item()  # no target: both
    with pytest.raises(ValueError, match="activity target"):
        activity_penalty([sparse], 1.0, target=1.0)


def test_bad_inputs_give_clear_errors():
    m = _egru()
    with pytest.raises(ValueError, match="input_size=6"):
        m(torch.randn(5, 2, 7))
    with pytest.raises(ValueError, match="3-D"):
        m(torch.randn(5, 2, 3, 6))
    bad = torch.randn(5, 2, 6)
    bad[2, 1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m(bad)
    with pytest.raises(ValueError, match="dtype"):
        m(torch.randn(5, 2, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"state y of layer 0 has shape \(3, 7\), expected "
                                         r"\(2, 7\)"):
        m(torch.randn(5, 2, 6), (EGRUState(torch.zeros(3, 7), torch.zeros(3, 7)),
                                 EGRUState(torch.zeros(2, 5), torch.zeros(2, 5))))
    with pytest.raises(ValueError, match="sequence of 2 per-layer"):
        m(torch.randn(5, 2, 6), (EGRUState(torch.zeros(2, 7), torch.zeros(2, 7)),))
    nan_state = m.init_state(2)
    nan_state[0].c[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        m(torch.randn(5, 2, 6), nan_state)
    with pytest.raises(ValueError, match="equal hidden sizes"):
        m(torch.randn(5, 2, 6), EGRUState(torch.zeros(2, 2, 7), torch.zeros(2, 2, 7)))
    with pytest.raises(ValueError, match="cell input"):
        EGRUCell(3, 4)(torch.randn(2, 5))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="reset_mode"):
        EGRU(3, 4, reset_mode="zero-ish")
    with pytest.raises(ValueError, match="dropout must be a probability"):
        EGRU(3, 4, dropout=1.5)
    with pytest.raises(ValueError, match="num_layers=3 does not match"):
        EGRU(3, [4, 5], num_layers=3)
    with pytest.raises(ValueError, match="threshold_mean"):
        EGRU(3, 4, threshold_mean=1.2)
    with pytest.raises(ValueError, match="input_size"):
        EGRU(0, 4)
    with pytest.raises(ValueError, match="hidden sizes"):
        EGRU(3, [4, 0])
    for bad in ((0.0, 0.5, 1.0), 5, ("a", 1.0)):
        with pytest.raises(ValueError, match="threshold_range must be a pair"):
            EGRU(3, 4, threshold_range=bad)


def test_set_threshold_checks_layer_and_shape():
    m = EGRU(3, [4, 5], threshold_init="constant")
    m.set_threshold(1, torch.full((5,), 0.25))
    m.set_threshold(0, 0.5)
    assert torch.allclose(m.threshold(1), torch.full((5,), 0.25))
    assert torch.allclose(m.threshold(0), torch.full((4,), 0.5))
    with pytest.raises(ValueError, match="layer must be an int <= 1, got 2"):
        m.set_threshold(2, 0.5)
    with pytest.raises(ValueError, match="layer must be an int >= 0, got -1"):
        m.set_threshold(-1, 0.5)
    with pytest.raises(ValueError, match=r"number or a \(4,\) tensor"):
        m.set_threshold(0, torch.full((3,), 0.5))
    with pytest.raises(ValueError, match=r"number or a \(4,\) tensor"):
        m.set_threshold(0, torch.full((4, 4), 0.5))


def test_stacked_state_and_config_roundtrip():
    m = EGRU(3, 4, num_layers=2, surrogate="rectangle", surrogate_width=0.5)
    x = torch.randn(4, 2, 3)
    y = torch.rand(2, 2, 4)
    c = torch.rand(2, 2, 4)
    out_stacked, _ = m(x, EGRUState(y, c))
    out_layers, _ = m(x, (EGRUState(y[0], c[0]), EGRUState(y[1], c[1])))
    assert torch.equal(out_stacked, out_layers)
    cfg = m.get_config()
    assert cfg["surrogate"] == {"shape": "rectangle", "gamma": 0.7, "width": 0.5}
    again = EGRU(**{k: v for k, v in cfg.items()})
    assert again.get_config() == cfg
    assert "reset_mode" in repr(m)


def test_surrogate_arguments_are_used():
    m = EGRU(3, 4, surrogate=Surrogate("fast_sigmoid", 0.3, 2.0))
    assert m.surrogate.shape == "fast_sigmoid" and m.surrogate.width == 2.0


def test_clamp_parameterisation_stores_theta_clamps_it_and_passes_gradients_straight() -> None:
    torch.manual_seed(0)
    m = EGRU(3, 50, threshold_parameterisation="clamp", threshold_mean=0.01)
    raw = m.threshold_raw_l0
    # the stored tensor is theta itself (Beta draws with mean 0.01, no clamp at 1e-4)
    torch.testing.assert_close(m.threshold(0), raw.detach())
    assert float(raw.min()) < 1e-4 and 0.0 < float(raw.mean()) < 0.05
    with torch.no_grad():
        raw[0], raw[1] = -0.5, 1.5
    theta = m.threshold(0)
    assert float(theta[0]) == 0.0 and float(theta[1]) == 1.0
    theta.sum().backward()
    torch.testing.assert_close(raw.grad, torch.ones_like(raw))
    m.set_threshold(0, 0.25)
    torch.testing.assert_close(m.threshold(0), torch.full((50,), 0.25))
    assert m.get_config()["threshold_parameterisation"] == "clamp"
    with pytest.raises(ValueError, match="threshold_parameterisation"):
        EGRU(3, 4, threshold_parameterisation="softplus")


def test_sigmoid_parameterisation_clamps_small_beta_draws_as_documented() -> None:
    from dualsparse.models.thresholds import BETA_CLAMP

    torch.manual_seed(0)
    m = EGRU(3, 2000, threshold_mean=0.01)
    theta = m.threshold(0).detach().double()
    clamped = float((theta <= BETA_CLAMP * (1 + 1e-3)).double().mean())
    assert 0.6 < clamped < 0.9  # about three quarters of Beta(0.03, 3) draws lie below 1e-4
    assert float(theta.min()) >= BETA_CLAMP * (1 - 1e-3)
