"""Group lasso value and gradient; spec validation and serialisation."""

import json
import math

import pytest
import torch

from dualsparse.models import EGRU, GRU
from dualsparse.sparsity import (
    AGPSchedule,
    Pruner,
    PruningSpec,
    TensorSpec,
    block_norms,
    group_lasso,
)


def test_group_lasso_hand_case_and_gradient():
    w = torch.tensor([[3.0, 0.0, 1.0, 1.0],
                      [4.0, 0.0, 1.0, 1.0]], requires_grad=True)
    # 2x2 blocks: [[3,0],[4,0]] -> 5 ; [[1,1],[1,1]] -> 2
    torch.testing.assert_close(block_norms(w, (2, 2)), torch.tensor([[5.0, 2.0]]),
                               check_stride=False)
    pen = group_lasso([(w, (2, 2))], 0.1)
    assert pen.item() == pytest.approx(0.7)
    pen.backward()
    expected = 0.1 * torch.tensor([[0.6, 0.0, 0.5, 0.5], [0.8, 0.0, 0.5, 0.5]])
    torch.testing.assert_close(w.grad, expected)
    # an all-zero block has gradient 0 (not NaN)
    z = torch.zeros(2, 2, requires_grad=True)
    group_lasso([(z, (1, 2))], 1.0).backward()
    assert torch.equal(z.grad, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="strength"):
        group_lasso([(w, (2, 2))], -1.0)


def test_pruner_penalty_over_spec_blocks():
    torch.manual_seed(0)
    gru = GRU(4, 8)
    plain = Pruner(gru, PruningSpec(["weight_hh_l0"], sparsity=0.5, block=(4, 4)))
    assert plain.penalty() is None
    plain.finalize()
    pruner = Pruner(gru, PruningSpec(["weight_*"], sparsity=0.5, block=(4, 4)),
                    AGPSchedule(0, 10, 5), group_lasso=1e-3)
    pen = pruner.penalty()
    manual = 1e-3 * sum(
        sum(math.sqrt(float(b.square().sum())) for b in getattr(gru, n).detach().reshape(
            6, 4, -1, 4).permute(0, 2, 1, 3).reshape(-1, 16))
        for n in ("weight_ih_l0", "weight_hh_l0"))
    assert pen.item() == pytest.approx(manual, rel=1e-5)
    pen.backward()
    assert gru.weight_hh_l0.grad is not None and gru.bias_hh_l0.grad is None
    # GLP: the penalty shrinks blocks, pruning removes them; pruned blocks add nothing
    opt = torch.optim.SGD(gru.parameters(), lr=0.1)
    pruner.attach_optimizer(opt)
    for step in range(1, 11):
        opt.zero_grad()
        (gru(torch.randn(3, 2, 4))[0].pow(2).mean() + pruner.penalty()).backward()
        opt.step()
        pruner.step(step)
    assert pruner.sparsity() == 0.5
    live = pruner.penalty().item()
    alive = 1e-3 * sum(float(block_norms(getattr(gru, n).detach(), (4, 4)).sum())
                       for n in ("weight_ih_l0", "weight_hh_l0"))
    assert live == pytest.approx(alive, rel=1e-5)


@pytest.mark.parametrize("spec, message", [
    (dict(tensors=["weight_hh_l0"], sparsity=1.0), "in \\[0, 1\\)"),
    (dict(tensors=["weight_hh_l0"], sparsity=-0.1), "in \\[0, 1\\)"),
    (dict(tensors=["weight_hh_l0"], sparsity=float("nan")), "in \\[0, 1\\)"),
    (dict(tensors=[{"name": "weight_hh_l0", "sparsity": {"z": 1.5}}]), "gate 'z'"),
    (dict(tensors=["weight_hh_l0"], block=(0, 4)), "two ints >= 1"),
    (dict(tensors=[]), "at least one"),
    (dict(tensors=[{"name": "weight_hh_l0", "blocks": [4, 4]}]), "unknown keys"),
    (dict(tensors=[{"name": "weight_hh_l0", "q": -1}]), "q of .weight_hh_l0. must be > 0"),
])
def test_bad_specs_fail_at_construction(spec, message):
    with pytest.raises(ValueError, match=message):
        PruningSpec.from_dict(spec)


def test_bad_specs_against_a_model():
    def make():
        return EGRU(6, 8, num_layers=2)
    with pytest.raises(ValueError, match="unknown tensor name 'weight_hh_l5'"):
        Pruner(make(), PruningSpec(["weight_hh_l5"], sparsity=0.5))
    with pytest.raises(ValueError, match="pattern 'rnn.\\*' matches no"):
        Pruner(make(), PruningSpec(["rnn.*"], sparsity=0.5))
    with pytest.raises(ValueError, match="only 2-D"):
        Pruner(make(), PruningSpec(["bias_hh_l0"], sparsity=0.5))
    with pytest.raises(ValueError, match="unknown gate\\(s\\) \\['n'\\].*\\['r', 'z', 'g'\\]"):
        Pruner(make(), PruningSpec([TensorSpec("weight_hh_l0", sparsity={"n": 0.5})]))
    with pytest.raises(ValueError, match="block shape 3x4 does not divide gate"):
        Pruner(make(), PruningSpec(["weight_hh_l0"], sparsity=0.5, block=(3, 4)))
    with pytest.raises(ValueError, match="does not divide the 6 columns"):
        Pruner(make(), PruningSpec(["weight_ih_l0"], sparsity=0.5, block=(4, 4)))
    model = make()
    with pytest.raises(ValueError, match="block shape"):
        Pruner(model, PruningSpec(["weight_hh_l0", "weight_ih_l0"], sparsity=0.5, block=(4, 4)))
    assert "weight_hh_l0_mask" not in model.state_dict()  # nothing half-registered


def test_patterns_overrides_and_json_round_trip():
    model = EGRU(6, 8, num_layers=2)
    spec = PruningSpec([
        "weight_*",  # thresholds and biases are not matched (1-D)
        {"name": "weight_hh_l1", "sparsity": {"r": 0.9}, "block": [2, 2]},
        {"name": "weight_ih_l0", "q": 0.3},
    ], sparsity=0.5)
    resolved = {t.name: t for t in spec.resolve(model)}
    assert list(resolved) == ["weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1"]
    assert resolved["weight_hh_l1"].sparsity == {"r": 0.9, "z": 0.5, "g": 0.5}
    assert resolved["weight_hh_l1"].block == (2, 2)
    assert resolved["weight_hh_l0"].sparsity == 0.5
    assert resolved["weight_ih_l0"].q == 0.3
    assert resolved["weight_hh_l0"].gates == (("r", 0, 8), ("z", 8, 16), ("g", 16, 24))
    text = json.dumps(spec.to_dict())
    assert PruningSpec.from_dict(json.loads(text)) == spec


def test_from_dict_accepts_block_strings():
    """Block shapes written as "RxC" (as on the command line) are parsed, not split into
    characters."""
    spec = PruningSpec.from_dict({"tensors": ["weight_hh_l0",
                                              {"name": "weight_ih_l0", "block": "2x1"}],
                                  "sparsity": 0.5, "block": "4x4"})
    assert spec.block == (4, 4)
    assert spec.tensors[1].block == (2, 1)
    assert PruningSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="RxC"):
        PruningSpec.from_dict({"tensors": ["weight_hh_l0"], "block": "4by4"})
