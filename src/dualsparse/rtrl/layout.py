"""Columns of the influence matrix: which parameter entry each column belongs to.

The parameters named in :class:`~dualsparse.rtrl.cell.CellSpec.param_names` are flattened
row-major and concatenated in that order (``p`` columns in all). Every column except the
thresholds' has its immediate derivative ``Mbar[:, col]`` in a single row, the unit ``i`` the
parameter feeds::

    Mbar[i, col] = deltas[slot * H + i] * src[k]      src = concat(x, y_{t-1}, 1)

with ``slot`` 0..2 for ``weight_ih``/``bias_ih`` gates and 3..5 for ``weight_hh``/``bias_hh``.
Pruning masks (``True`` = kept) select the kept columns; a pruned column of ``M`` starts at 0,
receives no immediate term and so stays 0: it is never stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dualsparse.rtrl.cell import CellSpec

THRESHOLD = -1  # slot code of threshold columns


@dataclass(frozen=True)
class ParamLayout:
    """Column metadata for a cell's parameters.

    Attributes:
        spec: the cell description.
        shapes: ``{name: shape}`` in column order; offsets: ``{name: first column}``.
        unit: ``(p,)`` row of the immediate term (the unit the parameter feeds).
        slot: ``(p,)`` index into the stacked deltas (``THRESHOLD`` for thresholds).
        src: ``(p,)`` index into ``concat(x, y_{t-1}, 1)`` (unused for thresholds).
        kept: ``(p,)`` bool, True where the parameter is trained (unpruned).
    """

    spec: CellSpec
    shapes: dict[str, tuple[int, ...]]
    offsets: dict[str, int]
    unit: torch.Tensor
    slot: torch.Tensor
    src: torch.Tensor
    kept: torch.Tensor

    @property
    def num_columns(self) -> int:
        return int(self.unit.numel())

    @property
    def kept_index(self) -> torch.Tensor:
        """Indices of the kept columns, ``(p_kept,)`` long."""
        return self.kept.nonzero().squeeze(1)

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cut a ``(..., p)`` tensor into per-parameter tensors of the parameters' shapes."""
        out = {}
        for name, shape in self.shapes.items():
            o = self.offsets[name]
            n = _numel(shape)
            out[name] = flat[..., o:o + n].reshape(*flat.shape[:-1], *shape)
        return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def build_layout(spec: CellSpec, masks: dict[str, torch.Tensor] | None = None) -> ParamLayout:
    """Column metadata for ``spec`` with optional boolean pruning masks (True = kept).

    Raises:
        ValueError: unknown mask name, wrong shape or dtype.
    """
    h, i_size = spec.hidden_size, spec.input_size
    masks = dict(masks or {})
    shapes = {"weight_ih": (3 * h, i_size), "weight_hh": (3 * h, h), "bias_ih": (3 * h,),
              "bias_hh": (3 * h,), "threshold_raw": (h,)}
    shapes = {n: shapes[n] for n in spec.param_names}
    for name, m in masks.items():
        if name not in shapes:
            raise ValueError(f"mask for unknown or untrained parameter {name!r}; "
                             f"trained parameters: {list(shapes)}")
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            raise ValueError(f"mask {name!r} must be a bool tensor (True = kept)")
        if tuple(m.shape) != shapes[name]:
            raise ValueError(f"mask {name!r} has shape {tuple(m.shape)}, "
                             f"parameter has {shapes[name]}")
    units, slots, srcs, kept, offsets = [], [], [], [], {}
    col = 0
    gate_unit = torch.arange(3 * h) % h
    gate = torch.arange(3 * h) // h
    for name, shape in shapes.items():
        offsets[name] = col
        n = _numel(shape)
        col += n
        if name == "weight_ih":
            units.append(gate_unit.repeat_interleave(i_size))
            slots.append(gate.repeat_interleave(i_size))
            srcs.append(torch.arange(i_size).repeat(3 * h))
        elif name == "weight_hh":
            units.append(gate_unit.repeat_interleave(h))
            slots.append(3 + gate.repeat_interleave(h))
            srcs.append(i_size + torch.arange(h).repeat(3 * h))
        elif name in ("bias_ih", "bias_hh"):
            units.append(gate_unit)
            slots.append(gate + (3 if name == "bias_hh" else 0))
            srcs.append(torch.full((3 * h,), i_size + h))
        else:
            units.append(torch.arange(h))
            slots.append(torch.full((h,), THRESHOLD))
            srcs.append(torch.zeros(h, dtype=torch.long))
        m = masks.get(name)
        kept.append(torch.ones(n, dtype=torch.bool) if m is None else m.reshape(-1).cpu())
    return ParamLayout(spec, shapes, offsets, torch.cat(units), torch.cat(slots),
                       torch.cat(srcs), torch.cat(kept))
