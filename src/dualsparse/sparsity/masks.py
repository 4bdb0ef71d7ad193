"""Pruning masks: one bool buffer per pruned tensor, kept in the model's state_dict.

Design (simple on purpose, and safe for our own RNN layers, ``nn.Linear`` and
``nn.Embedding``):

* The mask of parameter ``<owner>.<attr>`` is a bool buffer ``<owner>.<attr>_mask`` on the
  owning module. The parameter keeps its name, so the state_dict of a pruned model is the
  fresh model's keys plus the mask keys, and the pruned weights are stored as zeros.
* Masking is done *in place*: pruned weights are set to exactly 0 whenever a mask changes and
  again by :meth:`MaskSet.apply` (which the trainer reaches through ``Pruner.step`` after
  every ``optimizer.step()``).
* Forward pass: a forward pre-hook on every module that holds the parameter re-zeroes it if it
  was written since the last masking (tracked through the tensor's version counter, so a
  model run twice before ``backward`` is not modified in between; writes through ``.data``
  are not seen until the next :meth:`MaskSet.apply`).
* Backward pass: a gradient hook zeroes the gradient of pruned entries, so weight decay,
  momentum and Adam's moments get nothing for them, and gradient clipping sees only live
  weights. :meth:`MaskSet.apply` also zeroes every optimiser state tensor shaped like the
  parameter (SGD's ``momentum_buffer``, Adam's ``exp_avg``/``exp_avg_sq``/
  ``max_exp_avg_sq``, ...) at pruned entries.
* :meth:`MaskSet.remove` makes the zeros permanent and drops buffers and hooks.

Tied weights (decoder = embedding) are one tensor with one mask, stored under its first name.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

MASK_SUFFIX = "_mask"


@dataclass
class _Entry:
    name: str
    owner: nn.Module
    attr: str
    users: list[nn.Module]
    grad_handle: RemovableHandle | None = None
    version: int = -1

    @property
    def buffer(self) -> str:
        return self.attr + MASK_SUFFIX

    def param(self) -> torch.Tensor:
        return getattr(self.owner, self.attr)

    def mask(self) -> torch.Tensor:
        return getattr(self.owner, self.buffer)


class MaskSet:
    """The masks of one model (see the module docstring for the mechanism).

    Args:
        model: the module whose parameters are masked.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._entries: dict[str, _Entry] = {}
        self._pre_hooks: dict[int, RemovableHandle] = {}
        self._optimizers: list[weakref.ref] = []  # weak: fine-tuning rounds make new ones

    # ------------------------------------------------------------------ registry
    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def add(self, name: str) -> torch.Tensor:
        """Register an all-ones mask for parameter ``name`` (its canonical name); returns it."""
        if name in self._entries:
            raise ValueError(f"{name!r} already has a mask")
        params = dict(self.model.named_parameters())
        if name not in params:
            raise ValueError(f"unknown parameter {name!r}")
        param = params[name]
        if not param.requires_grad:
            raise ValueError(f"cannot mask {name!r}: it does not require grad (a frozen "
                             f"parameter gets no gradient hook); set requires_grad=True first")
        owner_path, _, attr = name.rpartition(".")
        owner = self.model.get_submodule(owner_path) if owner_path else self.model
        buffer = attr + MASK_SUFFIX
        existing = owner._buffers.get(buffer)
        if existing is not None and existing.dtype == torch.bool and \
                existing.shape == param.shape:
            pass  # a mask already there (e.g. a deep copy of a pruned model) is adopted as is
        elif hasattr(owner, buffer):
            raise ValueError(f"cannot add mask buffer {buffer!r}: {owner_path or 'the model'} "
                             f"already has an attribute of that name")
        else:
            owner.register_buffer(buffer, torch.ones(param.shape, dtype=torch.bool,
                                                     device=param.device))
        users = [m for m in self.model.modules()
                 if any(p is param for p in m._parameters.values())]
        entry = _Entry(name, owner, attr, users)
        entry.grad_handle = param.register_hook(self._grad_hook(entry))
        self._entries[name] = entry
        for m in users:
            if id(m) not in self._pre_hooks:
                self._pre_hooks[id(m)] = m.register_forward_pre_hook(self._pre_hook(m))
        return entry.mask()

    def mask(self, name: str) -> torch.Tensor:
        """The mask buffer of ``name`` (bool, shaped like the parameter; True = kept)."""
        return self._entry(name).mask()

    def weight(self, name: str) -> torch.Tensor:
        return self._entry(name).param()

    def _entry(self, name: str) -> _Entry:
        if name not in self._entries:
            raise ValueError(f"{name!r} has no mask; masked tensors: {self.names}")
        return self._entries[name]

    # ------------------------------------------------------------------ hooks
    @staticmethod
    def _grad_hook(entry: _Entry):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            return grad.masked_fill(~entry.mask(), 0)
        return hook

    def _pre_hook(self, module: nn.Module):
        def hook(mod: nn.Module, args: tuple) -> None:
            # `mod` (not the module hooked here): a deep copy of the model carries this hook
            # but holds other parameters, which it must not touch
            for e in self._entries.values():
                if any(u is mod for u in e.users) and e.param()._version != e.version:
                    self._zero_weight(e)
        return hook

    # ------------------------------------------------------------------ masking
    @torch.no_grad()
    def _zero_weight(self, e: _Entry) -> None:
        p = e.param()
        p.masked_fill_(~e.mask(), 0)
        e.version = p._version

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero this optimiser's state of pruned entries on every :meth:`apply`."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
        live = [r for r in self._optimizers if r() is not None]
        if not any(r() is optimizer for r in live):
            live.append(weakref.ref(optimizer))
        self._optimizers = live

    @torch.no_grad()
    def zero_optimizer_state(self) -> None:
        """Zero, at pruned entries, every state tensor shaped like its parameter."""
        for ref in self._optimizers:
            opt = ref()
            if opt is None:
                continue
            for e in self._entries.values():
                p = e.param()
                state = opt.state.get(p)
                if not state:
                    continue
                keep = e.mask()
                for value in state.values():
                    if isinstance(value, torch.Tensor) and value.shape == p.shape:
                        value.masked_fill_(~keep, 0)

    @torch.no_grad()
    def apply(self) -> None:
        """Zero pruned weights and the optimisers' state at pruned entries (in place)."""
        for e in self._entries.values():
            self._zero_weight(e)
        self.zero_optimizer_state()

    @torch.no_grad()
    def set_mask(self, name: str, keep: torch.Tensor) -> bool:
        """Replace the mask of ``name`` (bool, True = kept) and apply it; True if it changed."""
        e = self._entry(name)
        m = e.mask()
        if keep.shape != m.shape or keep.dtype != torch.bool:
            raise ValueError(f"mask for {name!r} must be bool {tuple(m.shape)}, got "
                             f"{keep.dtype} {tuple(keep.shape)}")
        changed = not torch.equal(m, keep.to(m.device))
        m.copy_(keep)
        self._zero_weight(e)
        return changed

    def remove(self) -> dict[str, torch.Tensor]:
        """Apply the masks for good and remove buffers and hooks. Returns the (now plain)
        weights ``{name: parameter}``, dense with zeros."""
        self.apply()
        out = {}
        for e in self._entries.values():
            out[e.name] = e.param()
            if e.grad_handle is not None:
                e.grad_handle.remove()
            del e.owner._buffers[e.buffer]
        for h in self._pre_hooks.values():
            h.remove()
        self._entries.clear()
        self._pre_hooks.clear()
        self._optimizers.clear()
        return out


def strip_masks(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A pruned model's state_dict without mask buffers (masks applied to their weights), for
    loading into a plain model. Keys ``X_mask`` are taken as masks when ``X`` is present with
    the same shape and the mask is bool."""
    out = dict(state_dict)
    for key, value in state_dict.items():
        if not key.endswith(MASK_SUFFIX):
            continue
        target = key[: -len(MASK_SUFFIX)]
        w = state_dict.get(target)
        if w is None or value.dtype != torch.bool or w.shape != value.shape:
            continue
        out[target] = w.masked_fill(~value, 0)
        del out[key]
    return out


def mask_keys(state_dict: Iterable[str]) -> list[str]:
    """Keys of a state_dict that end in the mask suffix."""
    return [k for k in state_dict if k.endswith(MASK_SUFFIX)]
