"""Masks: exact zeros under training, optimiser moments, hooks, checkpoints, finalize."""

import copy

import pytest
import torch
from torch import nn

from dualsparse.models import EGRU, GRU, LSTM, EGRUCell, GRUCell, LSTMCell
from dualsparse.sparsity import (
    IterativeSchedule,
    Pruner,
    PruningSpec,
    TensorSpec,
    strip_masks,
)
from dualsparse.train.checkpoint import load_model, save_model


def _egru(seed=0):
    torch.manual_seed(seed)
    return EGRU(4, 8, num_layers=2, threshold_mean=0.1)


def _loss(model, x):
    out, _ = model(x)
    return (out - 0.3).pow(2).mean() + out.mean()


def _pruned_entries(pruner):
    return {t.name: ~pruner.masks.mask(t.name) for t in pruner.tensors}


OPTIMISERS = {
    "sgd_momentum_wd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-2),
    "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    "adam_wd": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-2),
    "adam_amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("opt_name", list(OPTIMISERS))
def test_pruned_weights_stay_exactly_zero_and_get_no_updates(opt_name):
    model = _egru()
    x = torch.randn(6, 3, 4)
    opt = OPTIMISERS[opt_name](model.parameters())
    # dense steps first, so the optimiser holds nonzero moments when the pruning happens
    for _ in range(5):
        opt.zero_grad()
        _loss(model, x).backward()
        opt.step()
    pruner = Pruner(model, PruningSpec(["weight_*"], sparsity=0.6))
    pruner.attach_optimizer(opt)
    assert pruner.prune_to(1.0)
    pruned = _pruned_entries(pruner)
    before = {n: model.get_parameter(n).detach().clone() for n in pruned}
    for step in range(1, 61):
        opt.zero_grad()
        _loss(model, x).backward()
        for n, off in pruned.items():
            assert torch.count_nonzero(model.get_parameter(n).grad[off]) == 0
        opt.step()
        # checked *before* pruner.step: the masked gradients and zeroed moments alone keep
        # the pruned entries at exactly zero
        for n, off in pruned.items():
            assert torch.count_nonzero(model.get_parameter(n).detach()[off]) == 0, (n, step)
        pruner.step(step)
    for n, off in pruned.items():
        w = model.get_parameter(n).detach()
        assert not torch.equal(w[~off], before[n][~off])  # the live weights did train
        state = opt.state[model.get_parameter(n)]
        moments = [v for v in state.values() if torch.is_tensor(v) and v.shape == w.shape]
        assert moments, f"no moments found for {opt_name}"
        for v in moments:
            assert torch.count_nonzero(v[off]) == 0
    assert pruner.sparsity() == pytest.approx(0.6, abs=1e-3)


def test_adam_moments_of_pruned_entries_are_zeroed_at_pruning_time():
    torch.manual_seed(0)
    model = GRU(4, 8, num_layers=2)  # dense activity: every moment entry is nonzero
    x = torch.randn(5, 2, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        _loss(model, x).backward()
        opt.step()
    w = model.weight_hh_l0
    assert torch.count_nonzero(opt.state[w]["exp_avg"]) == w.numel()
    pruner = Pruner(model, PruningSpec(["weight_hh_l0"], sparsity=0.5))
    pruner.attach_optimizer(opt)
    pruner.prune_to(1.0)
    off = ~pruner.masks.mask("weight_hh_l0")
    assert int(off.sum()) == w.numel() // 2
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.count_nonzero(opt.state[w][key][off]) == 0
        assert torch.count_nonzero(opt.state[w][key][~off]) == int((~off).sum())


def test_forward_sees_masked_weights_after_external_write_and_allows_two_forwards():
    model = _egru()
    pruner = Pruner(model, PruningSpec(["weight_hh_l*"], sparsity=0.5))
    pruner.prune_to(1.0)
    off = ~pruner.masks.mask("weight_hh_l1")
    x = torch.randn(4, 2, 4)
    ref, _ = model(x)
    with torch.no_grad():
        model.weight_hh_l1[off] = 5.0  # a write the pruner did not make
    out, _ = model(x)  # the pre-hook re-applies the mask before the forward
    assert torch.count_nonzero(model.weight_hh_l1.detach()[off]) == 0
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # two forwards before one backward: no in-place modification in between
    loss = _loss(model, x) + _loss(model, x)
    loss.backward()
    assert torch.count_nonzero(model.weight_hh_l1.grad[off]) == 0


def _fresh_output(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)[0]


def test_checkpoint_round_trip_into_fresh_model(tmp_path):
    model = _egru(seed=1)
    pruner = Pruner(model, PruningSpec([{"name": "weight_hh_l*", "block": (4, 2)},
                                        "weight_ih_l1"], sparsity=0.75),
                    IterativeSchedule(3, 2, 6))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner.attach_optimizer(opt)
    x = torch.randn(5, 2, 4)
    for step in range(1, 9):
        opt.zero_grad()
        _loss(model, x).backward()
        opt.step()
        pruner.step(step)
    state, config = model.state_dict(), pruner.state_dict()
    fresh_keys = set(EGRU(4, 8, num_layers=2).state_dict())
    assert set(state) == fresh_keys | {"weight_hh_l0_mask", "weight_hh_l1_mask",
                                       "weight_ih_l1_mask"}
    ref = _fresh_output(model, x)

    # fresh model + pruner from the saved config, then the weights and masks
    other = _egru(seed=7)
    p2 = Pruner.from_config(other, config)
    other.load_state_dict(state)
    assert p2.last_update == pruner.last_update == 6
    for t in pruner.tensors:
        assert torch.equal(p2.masks.mask(t.name), pruner.masks.mask(t.name))
    torch.testing.assert_close(_fresh_output(other, x), ref)

    # checkpoint round trip (safetensors + JSON); a second save never overwrites the first
    save_model(tmp_path / "pruned", model, pruner)
    with pytest.raises(FileExistsError, match="already holds"):
        save_model(tmp_path / "pruned", model, pruner)
    third = _egru(seed=3)
    p3 = load_model(tmp_path / "pruned", third)
    assert p3.report() == pruner.report()
    torch.testing.assert_close(_fresh_output(third, x), ref)

    # a plain fresh model loads the stripped state dict (strict)
    plain = _egru(seed=4)
    plain.load_state_dict(strip_masks(state))
    torch.testing.assert_close(_fresh_output(plain, x), ref)


def test_mismatching_pruner_checkpoint_is_rejected():
    a = Pruner(_egru(), PruningSpec(["weight_hh_l0"], sparsity=0.5))
    b = Pruner(_egru(), PruningSpec(["weight_hh_l0"], sparsity=0.6))
    with pytest.raises(ValueError, match="spec"):
        b.load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="format"):
        b.load_state_dict({"spec": {}})


def test_finalize_leaves_plain_model():
    model = _egru()
    pruner = Pruner(model, PruningSpec(["weight_*"], sparsity=0.5))
    pruner.prune_to(1.0)
    masks = {t.name: pruner.masks.mask(t.name).clone() for t in pruner.tensors}
    weights = pruner.finalize()
    assert set(model.state_dict()) == set(EGRU(4, 8, num_layers=2).state_dict())
    assert not model._forward_pre_hooks
    for name, keep in masks.items():
        assert weights[name] is model.get_parameter(name)
        assert torch.count_nonzero(weights[name].detach()[~keep]) == 0
    # the model trains as a plain model: the old pruned entries now receive gradients
    _loss(model, torch.randn(3, 2, 4)).backward()
    assert torch.count_nonzero(model.weight_hh_l0.grad[~masks["weight_hh_l0"]]) > 0
    with pytest.raises(RuntimeError, match="finalized"):
        pruner.step(1)


MODULES = {
    "egru": lambda: EGRU(6, 8, num_layers=2),
    "egru_unfused": lambda: EGRU(6, 8, num_layers=2, fused=False),
    "gru": lambda: GRU(6, 8, num_layers=2),
    "lstm": lambda: LSTM(6, 8, num_layers=2),
    "egru_cell": lambda: EGRUCell(6, 8),
    "gru_cell": lambda: GRUCell(6, 8),
    "lstm_cell": lambda: LSTMCell(6, 8),
}


@pytest.mark.parametrize("kind", list(MODULES))
def test_works_on_recurrent_layers_and_cells_per_gate(kind):
    torch.manual_seed(0)
    model = MODULES[kind]()
    cell = kind.endswith("cell")
    gates = model.gate_names if hasattr(model, "gate_names") else (
        ("r", "z", "n") if kind == "gru_cell" else ("i", "f", "g", "o"))
    targets = {g: 0.25 * (i + 1) % 1.0 for i, g in enumerate(gates)}  # 0.25, 0.5, 0.75, 0
    name = "weight_hh" if cell else "weight_hh_l1"
    pruner = Pruner(model, PruningSpec([TensorSpec(name, sparsity=targets)], block=(2, 4)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner.attach_optimizer(opt)
    pruner.prune_to(1.0)
    keep = pruner.masks.mask(name)
    for i, g in enumerate(gates):
        rows = keep[i * 8:(i + 1) * 8]
        assert 1.0 - rows.float().mean().item() == pytest.approx(targets[g])
        blocks = rows.reshape(4, 2, 2, 4)
        assert torch.all(blocks.all(dim=(1, 3)) == blocks.any(dim=(1, 3)))  # whole blocks
    x = torch.randn(3, 6) if cell else torch.randn(4, 3, 6)
    for step in range(1, 11):
        opt.zero_grad()
        out = model(x)[0]
        out.pow(2).sum().backward()
        opt.step()
        pruner.step(step)
    assert torch.count_nonzero(model.get_parameter(name).detach()[~keep]) == 0
    rep = pruner.report()[0]
    assert rep["gate_sparsity"] == pytest.approx(targets)


class _TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Embedding(12, 8)
        self.rnn = GRU(8, 8)
        self.decoder = nn.Linear(8, 12)
        self.decoder.weight = self.encoder.weight

    def forward(self, tokens):
        out, _ = self.rnn(self.encoder(tokens))
        return self.decoder(out)


def test_embedding_and_tied_decoder_share_one_mask():
    torch.manual_seed(0)
    model = _TiedLM()
    pruner = Pruner(model, PruningSpec(["decoder.weight", "rnn.weight_hh_l0"], sparsity=0.5,
                                       block=(4, 2)))
    assert [t.name for t in pruner.tensors] == ["encoder.weight", "rnn.weight_hh_l0"]
    assert "encoder.weight_mask" in model.state_dict()
    assert "decoder.weight_mask" not in model.state_dict()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner.attach_optimizer(opt)
    pruner.prune_to(1.0)
    off = ~pruner.masks.mask("encoder.weight")
    tokens = torch.randint(0, 12, (5, 3))
    for step in range(1, 21):
        opt.zero_grad()
        nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten()).backward()
        opt.step()
        pruner.step(step)
    assert torch.count_nonzero(model.encoder.weight.detach()[off]) == 0
    assert model.decoder.weight is model.encoder.weight


def test_linear_layer_unstructured():
    torch.manual_seed(0)
    lin = nn.Linear(10, 6)
    pruner = Pruner(lin, PruningSpec(["weight"], sparsity=0.5))
    w = lin.weight.detach().clone()
    pruner.prune_to(1.0)
    keep = pruner.masks.mask("weight")
    assert int(keep.sum()) == 30
    assert w.abs()[keep].min() >= w.abs()[~keep].max()  # the smallest magnitudes went


def test_deep_copy_gets_its_own_pruner():
    model = _egru()
    pruner = Pruner(model, PruningSpec(["weight_hh_l*"], sparsity=0.5), IterativeSchedule(2, 0, 4))
    pruner.step(0)
    twin = copy.deepcopy(model)
    p2 = Pruner.from_config(twin, pruner.state_dict())  # adopts the copied mask buffers
    assert p2.last_update == 0 and p2.sparsity() == pruner.sparsity()
    opt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    p2.attach_optimizer(opt)
    original = model.weight_hh_l0.detach().clone()
    x = torch.randn(4, 2, 4)
    for step in range(1, 6):
        opt.zero_grad()
        _loss(twin, x).backward()
        opt.step()
        p2.step(step)
    assert p2.sparsity() > pruner.sparsity()  # the copy went on to its second round
    off = ~p2.masks.mask("weight_hh_l0")
    assert torch.count_nonzero(twin.weight_hh_l0.detach()[off]) == 0
    assert torch.equal(model.weight_hh_l0.detach(), original)  # the original is untouched
    model(x)
    assert torch.equal(model.weight_hh_l0.detach(), original)


def test_frozen_parameter_is_refused_with_a_clear_error():
    from dualsparse.sparsity.masks import MaskSet

    model = torch.nn.Linear(4, 4)
    model.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="'weight'.*does not require grad"):
        MaskSet(model).add("weight")
    assert "weight_mask" not in model.state_dict()
