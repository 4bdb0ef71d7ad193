"""GRU/LSTM: ATen's fused recurrence (``fused=True``) against the Python step loop."""

import pytest
import torch
from torch.nn.utils import parametrize

from dualsparse.models import GRU, LSTM
from dualsparse.models.compiled import compile_steps


class _Mask(torch.nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def _run(module, x, state, fused, seed=0):
    module.fused = fused
    module.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)  # dropconnect draws the same masks in both paths
    out, st = module(x, state)
    (out.square().sum() + sum(t.sum() for s in st for t in s)).backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    return out, st, grads, x.grad


@pytest.mark.parametrize("cls", [GRU, LSTM])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
def test_fused_equals_step_loop_in_float64(cls, bias, batch_first) -> None:
    torch.manual_seed(0)
    m = cls(5, [7, 4], bias=bias, batch_first=batch_first, dropconnect=0.3,
            dtype=torch.float64).train()
    # a pruning mask as a parametrisation: the fused call must see the masked weight and
    # route its gradient through the mask
    mask = (torch.rand_like(m.weight_hh_l0) > 0.5).double()
    parametrize.register_parametrization(m, "weight_hh_l0", _Mask(mask))
    x = torch.randn(4, 6, 5, dtype=torch.float64) if batch_first else \
        torch.randn(6, 4, 5, dtype=torch.float64)
    state = m.init_state(4)
    state = tuple(type(s)(*(torch.randn_like(t) for t in s)) for s in state)
    fused = _run(m, x, state, True)
    loop = _run(m, x, state, False)
    torch.testing.assert_close(fused[0], loop[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(fused[1], loop[1], strict=True):
        for ta, tb in zip(a, b, strict=True):
            torch.testing.assert_close(ta, tb, rtol=1e-12, atol=1e-12)
    assert fused[2].keys() == loop[2].keys()
    for name in fused[2]:
        torch.testing.assert_close(fused[2][name], loop[2][name], rtol=1e-10, atol=1e-12,
                                   msg=name)
    torch.testing.assert_close(fused[3], loop[3], rtol=1e-10, atol=1e-12)
    # pruned weights get no gradient through the mask
    grad = m.parametrizations.weight_hh_l0.original.grad
    assert grad[mask == 0].abs().max() == 0 and grad[mask == 1].abs().max() > 0


def _forbid_step_loop(monkeypatch, module):
    def fail(*args, **kwargs):
        raise AssertionError("the step loop ran")
    monkeypatch.setattr(module, "_step", fail)


@pytest.mark.parametrize("cls", [GRU, LSTM])
def test_the_fused_path_is_taken_where_it_can_be(cls, monkeypatch) -> None:
    torch.manual_seed(0)
    m = cls(3, 4, num_layers=2, dropconnect=0.2)
    x = torch.randn(5, 2, 3)
    _forbid_step_loop(monkeypatch, m)
    out, _, seqs = m.train()(x, return_sequences=True)  # dropconnect does not stop it
    assert seqs[1].output is not None and torch.equal(seqs[1].output, out)
    m.eval()(x[:, 0])  # unbatched
    m.fused = False
    with pytest.raises(AssertionError, match="step loop ran"):
        m(x)


@pytest.mark.parametrize("cls", [GRU, LSTM])
def test_zoneout_uses_the_step_loop_in_training_and_evaluation(cls, monkeypatch) -> None:
    torch.manual_seed(0)
    m = cls(3, 4, zoneout=0.1).eval()
    x = torch.randn(5, 2, 3)
    # evaluation mixes p * previous + (1 - p) * new after every step: not ATen's recurrence
    mixed = m(x)[0]
    m.zoneout = 0.0
    assert not torch.allclose(m(x)[0], mixed)
    m.zoneout = 0.1
    _forbid_step_loop(monkeypatch, m)
    for mode in (m.eval, m.train):
        mode()
        with pytest.raises(AssertionError, match="step loop ran"):
            m(x)


@pytest.mark.parametrize("cls", [GRU, LSTM])
def test_compile_steps_switches_to_the_step_loop(cls) -> None:
    m = cls(3, 4)
    assert m.fused
    compile_steps(m, backend="eager")
    assert not m.fused


def test_fused_is_not_part_of_the_config() -> None:
    m = LSTM(3, 4, fused=False)
    assert "fused" not in m.get_config() and not m.fused
    assert LSTM(**m.get_config()).fused
