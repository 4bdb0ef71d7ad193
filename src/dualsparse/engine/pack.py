"""Pack weights into the engine's formats, and trained recurrent stacks for the runtime.

* :func:`pack_matrix` (tiles / CSC), :func:`pack_dense` (dense, 64-row panels),
  :func:`choose_format` (``block="auto"``: one format per matrix, by the cost model of
  :func:`choose_block` and :data:`DENSE_MIN_DENSITY`);
* :func:`pack_rnn` -- EGRU/GRU/LSTM, ``torch.nn.GRU``/``LSTM`` -> :class:`PackedRNN`.

The formats themselves (layout, ``accumulate``, ``check``) are in
:mod:`dualsparse.engine.formats`. Every pack is checked (``check()``) before it is returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from dualsparse.engine.arrays import aligned_copy
from dualsparse.engine.formats import (
    AUTO_SCATTER_COST,
    DENSE_MIN_DENSITY,
    PANEL_ROWS,
    Block,
    DenseMatrix,
    PackedFormat,
    PackedMatrix,
    as_matrix,
)
from dualsparse.models.egru import EGRU
from dualsparse.models.recurrent import RecurrentBase
from dualsparse.models.rnn import GRU, LSTM
from dualsparse.validation import check_block, check_int

#: Cell kinds the runtime implements, with their gate counts.
NUM_GATES = {"egru": 3, "gru": 3, "lstm": 4}
RESET_CODES = {"subtract_threshold": 0, "subtract_output": 1, "none": 2}


def choose_block(weight: torch.Tensor | np.ndarray, scatter_cost: float = AUTO_SCATTER_COST
                 ) -> tuple[int, int]:
    """``(16, 1)`` if its tiles store ``<= scatter_cost`` values per nonzero weight (dense or
    row-block-pruned matrices), else ``(1, 1)`` (CSC, for unstructured sparsity)."""
    w = as_matrix(weight, "weight")
    nnz = int(np.count_nonzero(w))
    if nnz == 0:
        return (1, 1)
    rows, cols = w.shape
    nbr = math.ceil(rows / 16)
    padded = np.zeros((nbr * 16, cols), dtype=bool)
    padded[:rows] = w != 0
    stored = int(padded.reshape(nbr, 16, cols).any(axis=1).sum()) * 16
    return (16, 1) if stored <= scatter_cost * nnz else (1, 1)


def pack_dense(weight: torch.Tensor | np.ndarray, name: str = "weight") -> DenseMatrix:
    """All of ``weight`` ``(rows, cols)`` in 64-row panels (:class:`DenseMatrix`), checked."""
    w = as_matrix(weight, name)
    rows, cols = w.shape
    mat = DenseMatrix((rows, cols), int(np.count_nonzero(w)))
    padded = np.zeros((mat.rows_padded, cols), dtype=np.float32)
    padded[:rows] = w
    mat.data = aligned_copy(padded.reshape(-1, 64, cols).transpose(0, 2, 1)).reshape(-1)
    mat.check()
    return mat


def pack_matrix(weight: torch.Tensor | np.ndarray, block: Block = (1, 1),
                name: str = "weight", panel_rows: int = PANEL_ROWS) -> PackedMatrix:
    """Pack a dense ``(rows, cols)`` matrix whose pruned weights are exact zeros into tiles.

    Args:
        weight: the matrix (torch or numpy, any float dtype; stored as float32).
        block: tile shape ``(br, bc)`` (or ``"16x1"``); ``(1, 1)`` = CSC; ``"auto"``:
            :func:`choose_block`.
        name: used in error messages.
        panel_rows: row panel height, rounded up to a multiple of ``br``.
    """
    w = as_matrix(weight, name)
    if block == "auto":
        block = choose_block(w)
    br, bc = check_block("block", block)
    panel_rows = br * math.ceil(check_int("panel_rows", panel_rows, low=1) / br)
    rows, cols = w.shape
    nbr, nbc = math.ceil(rows / br), math.ceil(cols / bc)
    padded = np.zeros((nbr * br, nbc * bc), dtype=np.float32)
    padded[:rows, :cols] = w
    tiles = padded.reshape(nbr, br, nbc, bc).transpose(2, 0, 3, 1)  # (J, I, bc, br)
    keep = (tiles != 0).any(axis=(2, 3))  # (J, I)
    indptr = np.zeros(nbc + 1, dtype=np.int32)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    jj, ii = np.nonzero(keep)  # block columns in order, block rows sorted within each
    idx_dtype = np.uint16 if nbr <= np.iinfo(np.uint16).max else np.int32
    data = aligned_copy(tiles[jj, ii]).reshape(-1)
    # per panel boundary (in block rows) and block column: the first tile at or below it
    per_panel = panel_rows // br
    npan = math.ceil(nbr / per_panel)
    bounds = np.minimum(np.arange(npan + 1) * per_panel, nbr)
    below = np.zeros((npan + 1, nbc), dtype=np.int64)  # kept tiles above each boundary
    cum = np.concatenate([np.zeros((nbc, 1), np.int64), np.cumsum(keep, axis=1)], axis=1)
    below[:] = cum[:, bounds].T
    panel_ptr = (indptr[:-1][None, :] + below).astype(np.int32)
    mat = PackedMatrix((rows, cols), int(np.count_nonzero(w)), (br, bc), indptr,
                       ii.astype(idx_dtype), data, np.ascontiguousarray(panel_ptr), panel_rows)
    mat.check()
    return mat


def choose_format(weight: torch.Tensor | np.ndarray, block: Block = "auto",
                  name: str = "weight") -> PackedMatrix | DenseMatrix:
    """The packed format of one matrix: ``block="auto"``: :class:`DenseMatrix` at density
    ``>= DENSE_MIN_DENSITY``, else tiles by :func:`choose_block`; ``"dense"``: dense; a tile
    shape: :func:`pack_matrix` with it."""
    if block == "dense":
        return pack_dense(weight, name)
    if block == "auto":
        w = as_matrix(weight, name)
        if np.count_nonzero(w) >= DENSE_MIN_DENSITY * w.size:
            return pack_dense(w, name)
        return pack_matrix(w, choose_block(w), name)
    return pack_matrix(weight, block, name)



@dataclass
class PackedLayer:
    """One recurrent layer packed for the runtime.

    Attributes:
        kind: ``"egru"``, ``"gru"`` or ``"lstm"``.
        input_size, hidden_size: ``I`` and ``H``.
        w_ih: packed ``(G*H, I)``; w_hh: packed ``(G*H, H)`` (any format).
        b_ih, b_hh: ``(G*H,)`` float32 (zeros without bias).
        threshold: ``(H,)`` float32 (EGRU; zeros otherwise).
        reset_mode: EGRU reset mode (``"none"`` for GRU/LSTM).
        events: EGRU events on (False: plain GRU behaviour).
        zoneout: eval-mode zoneout probability (expectation ``p*prev + (1-p)*new``).
    """

    kind: str
    input_size: int
    hidden_size: int
    w_ih: PackedFormat
    w_hh: PackedFormat
    b_ih: np.ndarray
    b_hh: np.ndarray
    threshold: np.ndarray
    reset_mode: str = "none"
    events: bool = False
    zoneout: float = 0.0

    @property
    def num_gates(self) -> int:
        return NUM_GATES[self.kind]

    @property
    def nbytes(self) -> int:
        return (self.w_ih.nbytes + self.w_hh.nbytes + self.b_ih.nbytes + self.b_hh.nbytes
                + self.threshold.nbytes)

    def check(self) -> None:
        """Validate both matrices (:meth:`PackedMatrix.check`) and the per-row vectors."""
        g = self.num_gates * self.hidden_size
        if self.w_ih.shape != (g, self.input_size) or self.w_hh.shape != (g, self.hidden_size):
            raise ValueError(f"w_ih/w_hh must be ({g}, {self.input_size}) / ({g}, "
                             f"{self.hidden_size}), got {self.w_ih.shape} / {self.w_hh.shape}")
        self.w_ih.check()
        self.w_hh.check()
        for name, size in (("b_ih", g), ("b_hh", g), ("threshold", self.hidden_size)):
            a = getattr(self, name)
            if a.shape != (size,) or a.dtype != np.float32 or not np.isfinite(a).all():
                raise ValueError(f"{name} must be finite float32 ({size},), got {a.dtype} "
                                 f"{a.shape}")

    @property
    def dense_nbytes(self) -> int:
        return (self.w_ih.dense_nbytes + self.w_hh.dense_nbytes + self.b_ih.nbytes
                + self.b_hh.nbytes + self.threshold.nbytes)


@dataclass
class PackedRNN:
    """A stack of packed layers (the runtime's input)."""

    layers: list[PackedLayer] = field(default_factory=list)

    @property
    def input_size(self) -> int:
        return self.layers[0].input_size

    @property
    def nbytes(self) -> int:
        """Bytes of the packed model (weights, indices, biases, thresholds)."""
        return sum(layer.nbytes for layer in self.layers)

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the same model with dense float32 weights."""
        return sum(layer.dense_nbytes for layer in self.layers)

    def check(self) -> None:
        """Validate every layer and that each layer's input is the previous layer's output."""
        if not self.layers:
            raise ValueError("the packed model has no layers")
        for k, lay in enumerate(self.layers):
            lay.check()
            if k and lay.input_size != self.layers[k - 1].hidden_size:
                raise ValueError(f"layer {k} input size {lay.input_size} does not match layer "
                                 f"{k - 1}'s hidden size {self.layers[k - 1].hidden_size}")

    def memory_report(self) -> dict[str, float]:
        """``{"packed_bytes", "dense_bytes", "ratio"}`` (ratio = packed / dense)."""
        return {"packed_bytes": self.nbytes, "dense_bytes": self.dense_nbytes,
                "ratio": self.nbytes / self.dense_nbytes}


def _np(t: torch.Tensor | None, size: int) -> np.ndarray:
    if t is None:
        return np.zeros(size, dtype=np.float32)
    a = t.detach().to("cpu", torch.float32).numpy().astype(np.float32, copy=True)
    if not np.isfinite(a).all():
        raise ValueError("model parameters contain NaN or inf")
    return a


def model_kind(model: nn.Module) -> str:
    """``"egru"``, ``"gru"`` or ``"lstm"`` for a supported module, else ``ValueError``."""
    if isinstance(model, EGRU):
        return "egru"
    if isinstance(model, (GRU, nn.GRU)):
        return "gru"
    if isinstance(model, (LSTM, nn.LSTM)):
        return "lstm"
    raise ValueError(f"unsupported module {type(model).__name__}: the sparse engine packs "
                     "dualsparse EGRU/GRU/LSTM and torch.nn.GRU/LSTM")


def _layer_sizes(model: nn.Module) -> tuple[int, list[int]]:
    if isinstance(model, RecurrentBase):
        return model.input_size, list(model.hidden_sizes)
    if getattr(model, "bidirectional", False):
        raise ValueError("bidirectional torch RNNs are not supported by the sparse engine")
    if getattr(model, "proj_size", 0):
        raise ValueError("torch.nn.LSTM with proj_size > 0 is not supported by the sparse engine")
    return model.input_size, [model.hidden_size] * model.num_layers


def pack_rnn(model: nn.Module, block: Block = "auto") -> PackedRNN:
    """Pack a trained (pruned or dense) EGRU/GRU/LSTM for the sparse runtime.

    Args:
        model: ``dualsparse.models.EGRU``/``GRU``/``LSTM`` or ``torch.nn.GRU``/``LSTM``
            (unidirectional, no projection). Pruned weights must be exact zeros (as the
            pruning masks leave them).
        block: tile shape of every weight matrix (``(16, 1)``, ``"4x4"``, ``(1, 1)`` = CSC),
            ``"dense"``, or ``"auto"`` (per matrix, :func:`choose_format`).
    """
    kind = model_kind(model)
    input_size, hidden = _layer_sizes(model)
    zone = float(getattr(model, "zoneout", 0.0))
    layers = []
    for k, h in enumerate(hidden):
        w_ih = getattr(model, f"weight_ih_l{k}")
        w_hh = getattr(model, f"weight_hh_l{k}")
        b_ih = getattr(model, f"bias_ih_l{k}", None)
        b_hh = getattr(model, f"bias_hh_l{k}", None)
        g = NUM_GATES[kind] * h
        if kind == "egru":
            theta = _np(model.threshold(k), h)
            reset, events = model.reset_mode, bool(model.events)
        else:
            theta = np.zeros(h, dtype=np.float32)
            reset, events = "none", False
        layers.append(PackedLayer(
            kind=kind, input_size=w_ih.shape[1], hidden_size=h,
            w_ih=choose_format(w_ih, block, f"weight_ih_l{k}"),
            w_hh=choose_format(w_hh, block, f"weight_hh_l{k}"),
            b_ih=_np(b_ih, g), b_hh=_np(b_hh, g), threshold=theta,
            reset_mode=reset, events=events, zoneout=zone))
    if layers[0].input_size != input_size:
        raise ValueError("inconsistent input size in the model's first layer")
    packed = PackedRNN(layers)
    packed.check()
    return packed


__all__ = ["AUTO_SCATTER_COST", "NUM_GATES", "PANEL_ROWS", "DenseMatrix", "PackedLayer",
           "PackedMatrix", "PackedRNN", "choose_block", "choose_format", "model_kind",
           "pack_dense", "pack_matrix", "pack_rnn"]
