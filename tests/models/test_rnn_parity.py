"""Our GRU/LSTM (and EGRU with events off) equal torch.nn.GRU/LSTM given the same weights."""

import pytest
import torch

from dualsparse.models import (
    EGRU,
    GRU,
    LSTM,
    GRUCell,
    GRUState,
    LSTMCell,
    LSTMState,
    stack_state,
)

TOL = 1e-5


def _copy(ours, ref):
    sd = {k: v for k, v in ours.state_dict().items() if "threshold" not in k}
    ref.load_state_dict(sd)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_gru_equals_torch_gru(batch_first, bias):
    torch.manual_seed(0)
    ours = GRU(5, 8, num_layers=3, bias=bias, batch_first=batch_first)
    ref = torch.nn.GRU(5, 8, num_layers=3, bias=bias, batch_first=batch_first)
    _copy(ours, ref)
    x = torch.randn(4, 11, 5) if batch_first else torch.randn(11, 4, 5)
    h0 = torch.randn(3, 4, 8)
    out, st = ours(x, h0)
    out_ref, h_ref = ref(x, h0)
    assert torch.allclose(out, out_ref, atol=TOL)
    assert torch.allclose(stack_state(st), h_ref, atol=TOL)
    # gradients agree too
    out.square().sum().backward()
    out_ref.square().sum().backward()
    for name, p in ref.named_parameters():
        assert torch.allclose(getattr(ours, name).grad, p.grad, atol=1e-4), name


def test_lstm_equals_torch_lstm():
    torch.manual_seed(0)
    ours = LSTM(5, 8, num_layers=2)
    ref = torch.nn.LSTM(5, 8, num_layers=2)
    _copy(ours, ref)
    x = torch.randn(9, 3, 5)
    h0, c0 = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    out, st = ours(x, (h0, c0))
    out_ref, (h_ref, c_ref) = ref(x, (h0, c0))
    assert torch.allclose(out, out_ref, atol=TOL)
    stacked = stack_state(st)
    assert torch.allclose(stacked.h, h_ref, atol=TOL)
    assert torch.allclose(stacked.c, c_ref, atol=TOL)
    # unbatched input, as nn.LSTM accepts
    out1, _ = ours(x[:, 0])
    out1_ref, _ = ref(x[:, 0])
    assert torch.allclose(out1, out1_ref, atol=TOL)


def test_egru_without_events_equals_torch_gru():
    torch.manual_seed(0)
    ours = EGRU(5, 8, num_layers=2, events=False)
    ref = torch.nn.GRU(5, 8, num_layers=2)
    _copy(ours, ref)
    x = torch.randn(10, 3, 5)
    out, st = ours(x)
    out_ref, h_ref = ref(x)
    assert torch.allclose(out, out_ref, atol=TOL)
    assert torch.allclose(stack_state(st).y, h_ref, atol=TOL)


def test_cells_equal_torch_cells():
    torch.manual_seed(0)
    gc, gref = GRUCell(5, 7), torch.nn.GRUCell(5, 7)
    gref.load_state_dict(gc.state_dict())
    lc, lref = LSTMCell(5, 7), torch.nn.LSTMCell(5, 7)
    lref.load_state_dict(lc.state_dict())
    x, h, c = torch.randn(3, 5), torch.randn(3, 7), torch.randn(3, 7)
    assert torch.allclose(gc(x, GRUState(h))[0], gref(x, h), atol=TOL)
    h2, st = lc(x, LSTMState(h, c))
    h_ref, c_ref = lref(x, (h, c))
    assert torch.allclose(h2, h_ref, atol=TOL) and torch.allclose(st.c, c_ref, atol=TOL)
    assert gc(x[0])[0].shape == (7,)


@pytest.mark.parametrize("cls", [GRU, LSTM])
def test_chunked_state_carry(cls):
    torch.manual_seed(0)
    m = cls(4, [6, 3]).eval()
    x = torch.randn(10, 2, 4)
    out, st = m(x)
    o1, s1 = m(x[:4])
    o2, s2 = m(x[4:], s1)
    assert torch.allclose(torch.cat([o1, o2]), out, atol=1e-6)
    for a, b in zip(s2, st, strict=True):
        assert all(torch.allclose(u, v, atol=1e-6) for u, v in zip(a, b, strict=True))


def test_per_gate_views_and_layout():
    m = LSTM(3, [4, 2])
    assert m.weight_ih_l1.shape == (8, 4) and m.weight_hh_l1.shape == (8, 2)
    f = m.gate_weight(0, "hh", "f")
    assert f.shape == (4, 4) and f.data_ptr() == m.weight_hh_l0[4:8].data_ptr()
    with pytest.raises(ValueError, match="unknown gate"):
        m.gate_slice(0, "r")
    assert GRU.gate_names == ("r", "z", "n") and EGRU.gate_names == ("r", "z", "g")


def test_baseline_errors():
    m = GRU(3, 4, num_layers=2)
    with pytest.raises(ValueError, match=r"expected \(num_layers, B, H\)"):
        m(torch.randn(5, 2, 3), torch.zeros(3, 2, 4))
    with pytest.raises(ValueError, match="input_size=3"):
        m(torch.randn(5, 2, 4))
    with pytest.raises(ValueError, match=r"stacked state needs 2 tensor\(s\)"):
        LSTM(3, 4)(torch.randn(5, 2, 3), [torch.zeros(2, 4)])


@pytest.mark.parametrize("cls", [EGRU, GRU, LSTM])
def test_empty_sequence_is_rejected_clearly(cls):
    for m, x in ((cls(3, 4), torch.randn(0, 2, 3)), (cls(3, 4), torch.randn(0, 3)),
                 (cls(3, 4, batch_first=True), torch.randn(2, 0, 3))):
        with pytest.raises(ValueError, match="no time steps"):
            m(x)
    # an empty batch is fine (as in nn.GRU)
    assert cls(3, 4)(torch.randn(5, 0, 3))[0].shape == (5, 0, 4)
