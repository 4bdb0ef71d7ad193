"""Property: pruned weights stay exactly zero under random sequences of optimiser steps
(SGD with momentum/Nesterov, Adam/AMSGrad, AdamW; with weight decay), writes through
``.data`` and in place, further pruning, forwards and ``Pruner.step`` calls.

What must hold, and when (see :mod:`dualsparse.sparsity.masks`):

* after ``Pruner.step``: every pruned weight and every optimiser moment at a pruned entry is 0;
* after ``optimizer.step``, unless a ``.data`` write has happened since the last
  ``Pruner.step``: pruned weights are still 0 (masked gradients and zeroed moments alone);
* after a forward: pruned weights are 0 unless a ``.data`` write (which the version counter
  does not see) is pending, and the output is that of the masked weights;
* masks only shrink.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dualsparse.models import EGRU, GRU, LSTM
from dualsparse.sparsity import Pruner, PruningSpec, strip_masks


def examples(n_ci: int) -> int:
    """``n_ci`` examples under the ``ci`` profile, scaled like the loaded profile's budget
    (``dev``: 10x); an explicit ``max_examples`` would otherwise ignore the profile."""
    return max(1, n_ci * settings.default.max_examples // settings.get_profile("ci").max_examples)


OPTIMISERS = {
    "sgd": lambda ps, wd: torch.optim.SGD(ps, lr=0.05, weight_decay=wd),
    "sgd_momentum": lambda ps, wd: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=wd),
    "sgd_nesterov": lambda ps, wd: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True,
                                                   weight_decay=wd),
    "adam": lambda ps, wd: torch.optim.Adam(ps, lr=1e-2, weight_decay=wd),
    "adam_amsgrad": lambda ps, wd: torch.optim.Adam(ps, lr=1e-2, amsgrad=True, weight_decay=wd),
    "adamw": lambda ps, wd: torch.optim.AdamW(ps, lr=1e-2, weight_decay=wd),
}
MODELS = {"egru": lambda: EGRU(4, [6, 4], threshold_mean=0.05),
          "gru": lambda: GRU(4, 6), "lstm": lambda: LSTM(4, [6, 4])}
ACTIONS = ["opt_step", "opt_step", "pruner_step", "pruner_step", "data_write", "data_write",
           "inplace_write", "forward", "prune_more"]


def _pruned(pruner: Pruner) -> dict[str, torch.Tensor]:
    return {t.name: ~pruner.masks.mask(t.name).clone() for t in pruner.tensors}


def _assert_zero(model, pruned: dict[str, torch.Tensor], when: str) -> None:
    for name, off in pruned.items():
        w = model.get_parameter(name).detach()
        assert torch.count_nonzero(w[off]) == 0, f"{name}: pruned weights nonzero {when}"


@settings(max_examples=examples(30))
@given(model_kind=st.sampled_from(sorted(MODELS)), opt_name=st.sampled_from(sorted(OPTIMISERS)),
       weight_decay=st.sampled_from([0.0, 1e-2, 0.5]), block=st.sampled_from([(1, 1), (2, 2)]),
       sparsity=st.floats(0.1, 0.95), dense_steps=st.integers(0, 3),
       actions=st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=20),
       seed=st.integers(0, 2**16))
def test_masks_stay_exactly_zero(model_kind, opt_name, weight_decay, block, sparsity,
                                 dense_steps, actions, seed) -> None:
    torch.manual_seed(seed)
    model = MODELS[model_kind]()
    x = torch.randn(4, 2, 4)
    opt = OPTIMISERS[opt_name](model.parameters(), weight_decay)

    def loss():
        out, _ = model(x)
        return (out - 0.3).pow(2).mean() + out.mean()

    def opt_step():
        opt.zero_grad()
        loss().backward()
        opt.step()

    for _ in range(dense_steps):  # moments exist before pruning
        opt_step()
    pruner = Pruner(model, PruningSpec(["weight_*"], sparsity=sparsity, block=block))
    pruner.attach_optimizer(opt)
    fraction = 0.5
    pruner.prune_to(fraction)
    pruned = _pruned(pruner)
    _assert_zero(model, pruned, "after pruning")
    g = torch.Generator().manual_seed(seed + 1)
    dirty = False  # a .data write since the last Pruner.step
    for i, action in enumerate(actions):
        name = list(pruned)[i % len(pruned)]
        w = model.get_parameter(name)
        if action == "opt_step":
            opt_step()
            if not dirty:
                _assert_zero(model, pruned, f"after optimizer.step ({opt_name})")
        elif action == "pruner_step":
            pruner.step(i)
            dirty = False
            _assert_zero(model, pruned, "after Pruner.step")
            for n, off in pruned.items():
                for v in opt.state.get(model.get_parameter(n), {}).values():
                    if torch.is_tensor(v) and v.shape == off.shape:
                        assert torch.count_nonzero(v[off]) == 0, f"{n}: moment at pruned entry"
        elif action == "data_write":
            w.data.copy_(torch.randn(w.shape, generator=g))
            dirty = True
        elif action == "inplace_write":  # bumps the version: the next forward re-masks
            with torch.no_grad():
                w.copy_(torch.randn(w.shape, generator=g))
        elif action == "forward":
            with torch.no_grad():
                out, _ = model(x)
            if not dirty:
                _assert_zero(model, pruned, "after a forward")
                plain = MODELS[model_kind]().train(model.training)  # no masks, no hooks
                plain.load_state_dict(strip_masks(model.state_dict()))
                with torch.no_grad():
                    torch.testing.assert_close(out, plain(x)[0], rtol=0, atol=0)
        else:  # prune_more: masks only shrink
            fraction = min(1.0, fraction + 0.25)
            pruner.prune_to(fraction)
            now = _pruned(pruner)
            for n, off in pruned.items():
                assert bool(now[n][off].all()), f"{n}: a pruned weight came back"
            pruned = now
            if not dirty:
                _assert_zero(model, pruned, "after prune_to")
    pruner.step(len(actions))
    _assert_zero(model, pruned, "at the end")
