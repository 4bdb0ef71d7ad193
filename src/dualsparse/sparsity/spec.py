"""Declarative pruning spec: which tensors, target sparsity (per tensor or per gate), blocks.

A spec names parameters by fully qualified name (``rnn.weight_hh_l0``), by an ``fnmatch``
pattern (``rnn.weight_*``, ``*weight_hh_l*``) or through a tied alias (``decoder.weight`` when
it is the embedding's tensor). Later entries override earlier ones for the same tensor.
Patterns select only 2-D floating-point parameters; an exact name of anything else is an
error. It serialises to JSON (:meth:`PruningSpec.to_dict`) next to the checkpoint.

Gates: in our recurrent layers (``weight_ih_l{k}``/``weight_hh_l{k}`` of EGRU/GRU/LSTM and
``weight_ih``/``weight_hh`` of their cells) the rows are stacked gates of ``H_k`` rows each;
block rows must divide ``H_k`` so that no block crosses a gate boundary, and a target may be
given per gate (``{"r": 0.5, "z": 0.9, "g": 0.8}``; gates left out take the spec's default).
Any other 2-D tensor (``nn.Linear``, ``nn.Embedding``) is one gate named ``"all"``.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dualsparse.models import GRU, LSTM, GRUCell, LSTMCell
from dualsparse.validation import check_block, check_real

_WILDCARDS = "*?["
_LAYER_WEIGHT = re.compile(r"weight_(ih|hh)_l(\d+)")


def check_sparsity(value: Any, what: str) -> float:
    """A sparsity must be a finite number in ``[0, 1)``."""
    try:
        return check_real(what, value, low=0.0, high=1.0, high_open=True)
    except ValueError:
        raise ValueError(f"{what} must be a number in [0, 1), got {value!r}") from None


@dataclass(frozen=True)
class TensorSpec:
    """One entry of a spec.

    Attributes:
        name: fully qualified parameter name or ``fnmatch`` pattern.
        sparsity: final fraction of pruned weights: a number, a dict gate -> number, or None
            (the spec's default).
        block: ``(rows, cols)`` or None (the spec's default).
        q: Narang's ``q`` (threshold reached at the end of the ramp) for this tensor, or None
            (then the pruner takes a percentile of the tensor's block scores at construction).
    """

    name: str
    sparsity: float | dict[str, float] | None = None
    block: tuple[int, int] | None = None
    q: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"tensor name must be a non-empty string, got {self.name!r}")
        if isinstance(self.sparsity, dict):
            if not self.sparsity:
                raise ValueError(f"per-gate sparsity of {self.name!r} is empty")
            clean = {}
            for gate, v in self.sparsity.items():
                if not isinstance(gate, str):
                    raise ValueError(f"gate names of {self.name!r} must be strings, got {gate!r}")
                clean[gate] = check_sparsity(v, f"sparsity of gate {gate!r} of {self.name!r}")
            object.__setattr__(self, "sparsity", clean)
        elif self.sparsity is not None:
            object.__setattr__(self, "sparsity",
                               check_sparsity(self.sparsity, f"sparsity of {self.name!r}"))
        if self.block is not None:
            object.__setattr__(self, "block", check_block("block shape", self.block))
        if self.q is not None:
            object.__setattr__(self, "q", check_real(f"q of {self.name!r}", self.q, low=0.0,
                                                     low_open=True))

    @property
    def is_pattern(self) -> bool:
        return any(ch in self.name for ch in _WILDCARDS)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        if self.sparsity is not None:
            d["sparsity"] = dict(self.sparsity) if isinstance(self.sparsity, dict) else \
                self.sparsity
        if self.block is not None:
            d["block"] = list(self.block)
        if self.q is not None:
            d["q"] = self.q
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | str) -> TensorSpec:
        if isinstance(d, str):
            return cls(d)
        if not isinstance(d, dict):
            raise ValueError(f"a tensor entry must be a name or a dict, got {d!r}")
        unknown = set(d) - {"name", "sparsity", "block", "q"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} in tensor entry {d!r}")
        if "name" not in d:
            raise ValueError(f"tensor entry {d!r} has no 'name'")
        block = d.get("block")  # [r, c] from JSON, a tuple or "RxC": checked in __post_init__
        if isinstance(block, list):
            block = tuple(block)
        return cls(d["name"], d.get("sparsity"), block, d.get("q"))


@dataclass(frozen=True)
class ResolvedTensor:
    """A spec entry bound to one parameter of a model.

    Attributes:
        name: canonical parameter name (first name in ``model.named_parameters()``).
        shape: ``(R, C)``.
        gates: ``(gate, first_row, stop_row)`` per gate, in row order.
        block: ``(r, c)``; ``r`` divides every gate's row count, ``c`` divides ``C``.
        sparsity: a number (the tensor is ranked as a whole) or a complete dict gate -> number
            (each gate is ranked on its own).
        q: Narang's ``q`` if given.
        explicit_sparsity: True if the entry set its own sparsity (not the spec default).
    """

    name: str
    shape: tuple[int, int]
    gates: tuple[tuple[str, int, int], ...]
    block: tuple[int, int]
    sparsity: float | dict[str, float]
    q: float | None
    explicit_sparsity: bool

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass(frozen=True)
class PruningSpec:
    """Which tensors to prune, how far, in which blocks.

    Attributes:
        tensors: entries (:class:`TensorSpec`, dicts or plain names).
        sparsity: default final sparsity in ``[0, 1)``.
        block: default block shape ``(rows, cols)``; ``(1, 1)`` is unstructured.
    """

    tensors: tuple[TensorSpec, ...]
    sparsity: float = 0.0
    block: tuple[int, int] = (1, 1)

    def __post_init__(self) -> None:
        entries = self.tensors
        if isinstance(entries, (str, dict, TensorSpec)):
            entries = (entries,)
        try:
            entries = tuple(e if isinstance(e, TensorSpec) else TensorSpec.from_dict(e)
                            for e in entries)
        except TypeError:
            raise ValueError(f"tensors must be a list of entries, got {self.tensors!r}") from None
        if not entries:
            raise ValueError("a pruning spec needs at least one tensor entry")
        object.__setattr__(self, "tensors", entries)
        object.__setattr__(self, "sparsity", check_sparsity(self.sparsity, "sparsity"))
        object.__setattr__(self, "block", check_block("block shape", self.block))

    def to_dict(self) -> dict[str, Any]:
        return {"tensors": [t.to_dict() for t in self.tensors], "sparsity": self.sparsity,
                "block": list(self.block)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PruningSpec:
        if not isinstance(d, dict):
            raise ValueError(f"a pruning spec must be a dict, got {type(d).__name__}")
        unknown = set(d) - {"tensors", "sparsity", "block"}
        if unknown:
            raise ValueError(f"unknown pruning spec keys {sorted(unknown)}")
        if "tensors" not in d:
            raise ValueError("pruning spec has no 'tensors'")
        block = d.get("block", (1, 1))
        return cls(tuple(d["tensors"]) if isinstance(d["tensors"], list) else d["tensors"],
                   d.get("sparsity", 0.0), tuple(block) if isinstance(block, list) else block)

    def resolve(self, model: nn.Module) -> list[ResolvedTensor]:
        """Bind the entries to ``model``'s parameters (in model order); raises ValueError for
        unknown names, patterns matching nothing, non-matrices, bad gates or block shapes."""
        canonical: dict[int, str] = {}
        for name, p in model.named_parameters():
            canonical.setdefault(id(p), name)
        every = dict(model.named_parameters(remove_duplicate=False))
        chosen: dict[str, TensorSpec] = {}
        for entry in self.tensors:
            if entry.is_pattern:
                hits = [n for n, p in every.items() if fnmatch.fnmatchcase(n, entry.name)
                        and _prunable(p)]
                if not hits:
                    raise ValueError(f"pattern {entry.name!r} matches no 2-D floating-point "
                                     f"parameter of the model")
            else:
                if entry.name not in every:
                    raise ValueError(f"unknown tensor name {entry.name!r}; the model has "
                                     f"{_short_list(list(every))}")
                p = every[entry.name]
                if not _prunable(p):
                    raise ValueError(f"tensor {entry.name!r} has shape {tuple(p.shape)} and dtype "
                                     f"{p.dtype}; only 2-D floating-point weights can be pruned")
                hits = [entry.name]
            for n in hits:
                chosen[canonical[id(every[n])]] = entry
        out = []
        for name, p in model.named_parameters():
            if name in chosen:
                out.append(self._bind(model, name, p, chosen[name]))
        return out

    def _bind(self, model: nn.Module, name: str, p: torch.Tensor,
              entry: TensorSpec) -> ResolvedTensor:
        gates = gate_layout(model, name, p)
        block = entry.block or self.block
        r, c = block
        for gate, start, stop in gates:
            if (stop - start) % r:
                where = f"gate {gate!r} ({stop - start} rows)" if gate != "all" else \
                    f"its {stop - start} rows"
                raise ValueError(f"block shape {r}x{c} does not divide {where} of {name!r}; "
                                 f"blocks may not cross a gate boundary")
        if p.shape[1] % c:
            raise ValueError(f"block shape {r}x{c} does not divide the {p.shape[1]} columns of "
                             f"{name!r}")
        names = [g for g, _, _ in gates]
        if isinstance(entry.sparsity, dict):
            unknown = set(entry.sparsity) - set(names)
            if unknown:
                raise ValueError(f"unknown gate(s) {sorted(unknown)} in the sparsity of {name!r}; "
                                 f"its gates are {names}")
            sparsity: float | dict[str, float] = {g: entry.sparsity.get(g, self.sparsity)
                                                  for g in names}
        else:
            sparsity = self.sparsity if entry.sparsity is None else entry.sparsity
        return ResolvedTensor(name, (int(p.shape[0]), int(p.shape[1])), gates, block, sparsity,
                              entry.q, entry.sparsity is not None)


def _prunable(p: torch.Tensor) -> bool:
    return p.dim() == 2 and p.is_floating_point()


def _short_list(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def gate_layout(model: nn.Module, name: str, p: torch.Tensor) -> tuple[tuple[str, int, int], ...]:
    """Gate row ranges ``(gate, start, stop)`` of a 2-D parameter of ``model``.

    Recurrent layers (modules with ``gate_names`` and ``hidden_sizes``: EGRU, GRU, LSTM) and
    their cells split ``weight_ih*``/``weight_hh*`` into stacked gates; anything else is one
    gate ``"all"``.
    """
    owner_path, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_path) if owner_path else model
    rows = int(p.shape[0])
    gate_names: tuple[str, ...] | None = None
    hidden: int | None = None
    m = _LAYER_WEIGHT.fullmatch(attr)
    if m and hasattr(owner, "gate_names") and hasattr(owner, "hidden_sizes"):
        gate_names, hidden = tuple(owner.gate_names), int(owner.hidden_sizes[int(m[2])])
    elif attr in ("weight_ih", "weight_hh") and isinstance(getattr(owner, "hidden_size", None),
                                                           int):
        if hasattr(owner, "gate_names"):
            gate_names = tuple(owner.gate_names)
        elif isinstance(owner, GRUCell):
            gate_names = GRU.gate_names
        elif isinstance(owner, LSTMCell):
            gate_names = LSTM.gate_names
        hidden = owner.hidden_size
    if gate_names is None or hidden is None or len(gate_names) * hidden != rows:
        return (("all", 0, rows),)
    return tuple((g, i * hidden, (i + 1) * hidden) for i, g in enumerate(gate_names))
