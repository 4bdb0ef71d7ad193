import numpy as np
import pytest
import torch

from dualsparse.embedded.quant import to_q15
from dualsparse.embedded.reference import deploy
from dualsparse.models.egru_embedded import EGRUEmbedded, EGRUEmbeddedCell, KWSNet


def _ss(x):
    return x / (1 + x.abs())


def test_cell_equations():
    torch.manual_seed(0)
    c = EGRUEmbeddedCell(5, 4).double()
    x, h = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    pre = x @ c.weight_ih.t() + c.bias_ih + h @ c.weight_hh.t() + c.bias_hh
    z, n = (_ss(pre[:, :4]) + 1) / 2, _ss(pre[:, 4:])
    assert torch.allclose(c(x, h), (1 - z) * h + z * n)


def test_reset_gate_ablation():
    torch.manual_seed(0)
    c = EGRUEmbeddedCell(5, 4, reset_gate=True).double()
    assert c.weight_ih.shape == (12, 5)
    x, h = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    gi = x @ c.weight_ih.t() + c.bias_ih
    gh = h @ c.weight_hh.t() + c.bias_hh
    r = (_ss(gi[:, :4] + gh[:, :4]) + 1) / 2
    z = (_ss(gi[:, 4:8] + gh[:, 4:8]) + 1) / 2
    n = _ss(gi[:, 8:] + r * gh[:, 8:])
    assert torch.allclose(c(x, h), (1 - z) * h + z * n)
    with pytest.raises(ValueError, match="reset gate"):
        EGRUEmbeddedCell(5, 4, reset_gate=True, quant_bits=3)


def test_multilayer_interface():
    m = EGRUEmbedded(6, 5, num_layers=2, batch_first=True)
    out, hn = m(torch.randn(3, 7, 6))
    assert out.shape == (3, 7, 5) and hn.shape == (2, 3, 5)
    assert torch.allclose(out[:, -1], hn[-1])
    assert set(m.named_parameters_gru()) == {f"{k}_l{i}" for i in (0, 1) for k in
                                             ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    with pytest.raises(ValueError, match="h_0"):
        m(torch.randn(3, 7, 6), torch.zeros(1, 3, 5))
    with pytest.raises(ValueError, match="expected input"):
        m(torch.randn(3, 7, 4))


def test_kwsnet_kinds_and_gradients():
    for kind in ("gru", "egru", "egru-q"):
        m = KWSNet(kind, 8, (6, 5), 4)
        out = m(torch.rand(9, 3, 8))
        assert out.shape == (3, 4)
        out.sum().backward()
        assert all(p.grad is not None for p in m.parameters())
    with pytest.raises(ValueError, match="kind"):
        KWSNet("lstm")


def test_qat_model_matches_integer_reference():
    torch.manual_seed(1)
    m = KWSNet("egru-q", 16, (12, 8), 5)
    for p in m.parameters():  # move weights off the grid, biases to varied values
        p.data.add_(0.1 * torch.randn_like(p))
    x = torch.rand(20, 30, 16)
    with torch.no_grad():
        lf = (m(x) / m.logit_gain).numpy()
    d = deploy(m)
    li, _ = d.run(to_q15(x.numpy()).transpose(1, 0, 2))
    assert np.abs(li / 32768 - lf).max() < 1e-2
    assert (li.argmax(1) == lf.argmax(1)).mean() >= 0.9
    assert d.model_bytes() < 4 * m.num_weights() / 5


def test_unknown_zero_rule_is_refused_at_construction():
    # a float eGRU never quantises in training, so a typo used to surface only at deploy()
    with pytest.raises(ValueError, match="zero_rule"):
        KWSNet("egru", zero_rule="papre")
    with pytest.raises(ValueError, match="zero_rule"):
        EGRUEmbeddedCell(4, 3, zero_rule="nearest")
