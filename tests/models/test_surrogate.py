import pytest
import torch

from dualsparse.models.surrogate import (
    Surrogate,
    heaviside,
    make_surrogate,
    straight_through_heaviside,
)

SHAPES = ["triangle", "rectangle", "fast_sigmoid"]


def test_triangle_values_use_half_width():
    s = Surrogate("triangle", gamma=0.5, width=2.0)
    x = torch.tensor([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0])
    assert torch.allclose(s.derivative(x), torch.tensor([0.0, 0.0, 0.25, 0.5, 0.25, 0.0]))
    assert s.in_support(x).tolist() == [False, False, True, True, True, False]


@pytest.mark.parametrize("shape", SHAPES)
def test_heaviside_forward_is_step_and_backward_is_surrogate(shape):
    s = Surrogate(shape, gamma=0.8, width=0.7)
    x = torch.linspace(-2, 2, 41, dtype=torch.float64, requires_grad=True)
    y = heaviside(x, s)
    assert torch.equal(y, (x > 0).double())
    assert y[20].item() == 0.0  # H(0) = 0
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(g, s.derivative(x.detach()))


@pytest.mark.parametrize("shape", SHAPES)
def test_antiderivative_derivative_is_the_surrogate(shape):
    s = Surrogate(shape, gamma=1.3, width=0.4)
    x = (torch.rand(500, dtype=torch.float64) - 0.5) * 4
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(s.antiderivative(x).sum(), x)
    assert torch.allclose(g, s.derivative(x.detach()), atol=1e-12)
    # straight-through reference: forward is the step, backward the surrogate
    y = straight_through_heaviside(x, s)
    assert torch.equal(y.detach(), (x > 0).double())


def test_bad_surrogates_raise_clear_errors():
    with pytest.raises(ValueError, match="surrogate shape must be one of"):
        Surrogate("sigmoidish")
    with pytest.raises(ValueError, match="width"):
        Surrogate("triangle", width=0.0)
    with pytest.raises(ValueError, match="gamma"):
        Surrogate("triangle", gamma=float("nan"))
    with pytest.raises(ValueError, match="not both"):
        make_surrogate(Surrogate(), gamma=1.0)
    assert make_surrogate({"shape": "rectangle", "gamma": 2.0, "width": 0.5}).gamma == 2.0
