"""Pack trained recurrent weights for activity-indexed (column-wise) access.

A weight matrix ``W`` ``(R, C)`` (rows = stacked gate outputs ``G*H``, columns = input features
or recurrent units) is stored *by column*: for an active input ``x_j`` the runtime adds
``x_j * W[:, j]`` to the gate pre-activations, touching only the nonzero weights of that column.

Formats (:class:`PackedMatrix`):

* ``block=(1, 1)`` -- CSC: per column, the row indices and values of its nonzero weights.
* ``block=(br, bc)`` -- block-compressed columns: the matrix is cut into ``br x bc`` tiles; a
  tile is stored (densely, zeros included) when any of its weights is nonzero. Tiles of one
  block column ``[bc*J, bc*J + bc)`` are contiguous; inside a tile each of the ``bc`` columns is
  a contiguous run of ``br`` values, so the inner loop is a vectorisable ``br``-long axpy.
  ``(16, 1)`` suits unstructured-by-row-blocks pruning and dense columns; ``(4, 4)`` suits
  Narang-style 4x4 block pruning. With all weights nonzero, ``(16, 1)`` is a dense
  column-major copy of ``W`` (plus one index per 16 rows).

``splits`` cut the rows into ``nparts`` disjoint ranges (per block column, the offsets where each
range starts), so that ``nparts`` threads can accumulate the same active columns without write
conflicts.

Row indices are ``uint16`` when the (block-)row count allows it, else ``int32``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from dualsparse.models.egru import EGRU
from dualsparse.models.recurrent import RecurrentBase
from dualsparse.models.rnn import GRU, LSTM

#: Cell kinds the runtime implements, with their gate counts.
NUM_GATES = {"egru": 3, "gru": 3, "lstm": 4}
RESET_CODES = {"subtract_threshold": 0, "subtract_output": 1, "none": 2}


#: Cost of one scattered CSC update (index load, read-modify-write) relative to one stored
#: value of a contiguous 16-long SIMD axpy: ``benchmarks/bench_engine.py`` measured 0.96 ns per
#: nonzero (CSC, 10% unstructured, 4050x1350) vs 0.35-0.62 ns per stored value ((16, 1)
#: tiles) on our AMD EPYC (docs/engine.md), i.e. 1.5-2.7x. ``block="auto"`` uses ``(16, 1)``
#: tiles when they store at most this many values per nonzero weight, else CSC.
AUTO_SCATTER_COST = 3.0

Block = tuple[int, int] | str


def choose_block(weight: torch.Tensor | np.ndarray, scatter_cost: float = AUTO_SCATTER_COST
                 ) -> tuple[int, int]:
    """``(16, 1)`` if its tiles store ``<= scatter_cost`` values per nonzero weight (dense or
    row-block-pruned matrices), else ``(1, 1)`` (CSC, for unstructured sparsity)."""
    w = _as_matrix(weight, "weight")
    nnz = int(np.count_nonzero(w))
    if nnz == 0:
        return (1, 1)
    rows, cols = w.shape
    nbr = math.ceil(rows / 16)
    padded = np.zeros((nbr * 16, cols), dtype=bool)
    padded[:rows] = w != 0
    stored = int(padded.reshape(nbr, 16, cols).any(axis=1).sum()) * 16
    return (16, 1) if stored <= scatter_cost * nnz else (1, 1)


def _check_block(block: tuple[int, int]) -> tuple[int, int]:
    if (not isinstance(block, (tuple, list)) or len(block) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in block)):
        raise ValueError(f"block must be a pair of ints >= 1 (rows, cols), got {block!r}")
    return int(block[0]), int(block[1])


@dataclass
class PackedMatrix:
    """A weight matrix ``(rows, cols)`` packed by (block) columns.

    Attributes:
        shape: ``(rows, cols)`` of the dense matrix.
        block: ``(br, bc)``; ``(1, 1)`` is plain CSC.
        indptr: ``(n_block_cols + 1,)`` int32: tiles of block column ``J`` are
            ``indptr[J]:indptr[J+1]``.
        indices: ``(n_tiles,)`` block-row index of each tile (``uint16`` or ``int32``).
        data: ``(n_tiles * bc * br,)`` float32, tile-major, then column, then row.
        splits: ``(n_block_cols, nparts + 1)`` int32: tile offsets where each row range starts.
        nnz: nonzero weights of the dense matrix.
    """

    shape: tuple[int, int]
    block: tuple[int, int]
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    splits: np.ndarray
    nnz: int

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[1]

    @property
    def rows_padded(self) -> int:
        """Length of an accumulator buffer: rows rounded up to a multiple of ``br``."""
        return math.ceil(self.shape[0] / self.block[0]) * self.block[0]

    @property
    def nparts(self) -> int:
        return self.splits.shape[1] - 1

    @property
    def density(self) -> float:
        """Fraction of nonzero weights of the dense matrix."""
        return self.nnz / (self.shape[0] * self.shape[1])

    @property
    def stored_values(self) -> int:
        """Values stored (``nnz`` for CSC; whole tiles, zeros included, for blocks)."""
        return int(self.data.size)

    @property
    def nbytes(self) -> int:
        """Bytes of the packed arrays (values, indices, pointers, splits)."""
        return int(self.indptr.nbytes + self.indices.nbytes + self.data.nbytes
                   + self.splits.nbytes)

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the dense float32 matrix."""
        return 4 * self.shape[0] * self.shape[1]

    def column_nnz(self) -> np.ndarray:
        """Stored values per input column ``(cols,)`` (what one active column costs)."""
        br, bc = self.block
        per_block_col = np.diff(self.indptr).astype(np.int64) * br
        return np.repeat(per_block_col, bc)[: self.cols]

    def to_dense(self) -> np.ndarray:
        """Unpack into the dense float32 matrix ``(rows, cols)`` (zeros included)."""
        br, bc = self.block
        rows_p = self.rows_padded
        cols_p = (len(self.indptr) - 1) * bc
        out = np.zeros((rows_p, cols_p), dtype=np.float32)
        tiles = self.data.reshape(-1, bc, br)
        for bj in range(len(self.indptr) - 1):
            for t in range(self.indptr[bj], self.indptr[bj + 1]):
                r0 = int(self.indices[t]) * br
                out[r0:r0 + br, bj * bc:(bj + 1) * bc] = tiles[t].T
        return out[: self.rows, : self.cols]



#: Rows per panel of :class:`PanelMatrix` (four 16-float SIMD registers of accumulators).
PANEL_ROWS = 64


@dataclass
class PanelMatrix:
    """A weight matrix ``(rows, cols)`` cut into row panels of ``PANEL_ROWS`` rows.

    For panel ``P`` and column ``j`` the ``PANEL_ROWS`` weights ``W[64P:64P+64, j]`` are stored
    contiguously (zeros included) when any of them is nonzero; ``colmap[P, j]`` is their strip
    number (``-1``: all zero). The kernel (:func:`dualsparse.engine.kernels.accumulate_panels`)
    keeps a panel's outputs in registers while it adds the active columns, so a long output
    vector (a language-model decoder) is read and written once per step, not once per active
    column. :meth:`dualsparse.engine.lm.SparseLM.from_model` uses it for a (nearly) dense
    decoder at 1 thread.

    Attributes:
        shape: ``(rows, cols)``; colmap: ``(n_panels, cols)`` int32; data: ``(n_strips *
        PANEL_ROWS,)`` float32; nnz: nonzero weights.
    """

    shape: tuple[int, int]
    colmap: np.ndarray
    data: np.ndarray
    nnz: int

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[1]

    @property
    def rows_padded(self) -> int:
        return self.colmap.shape[0] * PANEL_ROWS

    @property
    def stored_values(self) -> int:
        return int(self.data.size)

    @property
    def density(self) -> float:
        return self.nnz / (self.shape[0] * self.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.colmap.nbytes + self.data.nbytes)

    @property
    def dense_nbytes(self) -> int:
        return 4 * self.shape[0] * self.shape[1]

    def to_dense(self) -> np.ndarray:
        """Unpack into the dense float32 matrix ``(rows, cols)``."""
        npan, cols = self.colmap.shape
        out = np.zeros((npan * PANEL_ROWS, cols), dtype=np.float32)
        strips = self.data.reshape(-1, PANEL_ROWS)
        for p in range(npan):
            for j in range(cols):
                s = self.colmap[p, j]
                if s >= 0:
                    out[p * PANEL_ROWS:(p + 1) * PANEL_ROWS, j] = strips[s]
        return out[: self.rows]


def pack_panels(weight: torch.Tensor | np.ndarray, name: str = "weight") -> PanelMatrix:
    """Pack a dense ``(rows, cols)`` matrix (pruned weights as exact zeros) into panels."""
    w = _as_matrix(weight, name)
    rows, cols = w.shape
    npan = math.ceil(rows / PANEL_ROWS)
    padded = np.zeros((npan * PANEL_ROWS, cols), dtype=np.float32)
    padded[:rows] = w
    strips = padded.reshape(npan, PANEL_ROWS, cols).transpose(0, 2, 1)  # (P, C, 64)
    keep = (strips != 0).any(axis=2)
    colmap = np.full((npan, cols), -1, dtype=np.int32)
    colmap[keep] = np.arange(int(keep.sum()), dtype=np.int32)
    data = np.ascontiguousarray(strips[keep]).reshape(-1)
    return PanelMatrix((rows, cols), colmap, data, int(np.count_nonzero(w)))


def _as_matrix(weight: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    if isinstance(weight, torch.Tensor):
        weight = weight.detach().to("cpu", torch.float32).numpy()
    w = np.ascontiguousarray(weight, dtype=np.float32)
    if w.ndim != 2 or w.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D matrix, got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError(f"{name} contains NaN or inf")
    return w


def pack_matrix(weight: torch.Tensor | np.ndarray, block: Block = (1, 1),
                nparts: int = 1, name: str = "weight") -> PackedMatrix:
    """Pack a dense ``(rows, cols)`` matrix whose pruned weights are exact zeros.

    Args:
        weight: the matrix (torch or numpy, any float dtype; stored as float32).
        block: tile shape ``(br, bc)``; ``(1, 1)`` = CSC; ``"auto"``: :func:`choose_block`.
        nparts: number of disjoint row ranges (threads that may accumulate concurrently).
        name: used in error messages.
    """
    w = _as_matrix(weight, name)
    if block == "auto":
        block = choose_block(w)
    br, bc = _check_block(block)
    if not isinstance(nparts, int) or nparts < 1:
        raise ValueError(f"nparts must be an int >= 1, got {nparts!r}")
    rows, cols = w.shape
    nbr, nbc = math.ceil(rows / br), math.ceil(cols / bc)
    padded = np.zeros((nbr * br, nbc * bc), dtype=np.float32)
    padded[:rows, :cols] = w
    # tiles[I, J] is the (br, bc) tile at block row I, block column J
    tiles = padded.reshape(nbr, br, nbc, bc).transpose(2, 0, 3, 1)  # (J, I, bc, br)
    keep = (tiles != 0).any(axis=(2, 3))  # (J, I)
    counts = keep.sum(axis=1)
    indptr = np.zeros(nbc + 1, dtype=np.int32)
    np.cumsum(counts, out=indptr[1:])
    jj, ii = np.nonzero(keep)  # row-major over (J, I): block columns in order, rows sorted
    idx_dtype = np.uint16 if nbr <= np.iinfo(np.uint16).max else np.int32
    indices = ii.astype(idx_dtype)
    data = np.ascontiguousarray(tiles[jj, ii]).reshape(-1)
    # row-range boundaries in block rows, and per block column the first tile of each range
    bounds = np.array([math.ceil(nbr * p / nparts) for p in range(nparts + 1)], dtype=np.int64)
    splits = np.empty((nbc, nparts + 1), dtype=np.int32)
    for bj in range(nbc):
        lo, hi = indptr[bj], indptr[bj + 1]
        splits[bj] = lo + np.searchsorted(ii[lo:hi], bounds, side="left")
    return PackedMatrix((rows, cols), (br, bc), indptr, indices, data, splits,
                        int(np.count_nonzero(w)))


@dataclass
class PackedLayer:
    """One recurrent layer packed for the runtime.

    Attributes:
        kind: ``"egru"``, ``"gru"`` or ``"lstm"``.
        input_size, hidden_size: ``I`` and ``H``.
        w_ih: packed ``(G*H, I)``; w_hh: packed ``(G*H, H)``.
        b_ih, b_hh: ``(G*H,)`` float32 (zeros without bias).
        threshold: ``(H,)`` float32 (EGRU; zeros otherwise).
        reset_mode: EGRU reset mode (``"none"`` for GRU/LSTM).
        events: EGRU events on (False: plain GRU behaviour).
        zoneout: eval-mode zoneout probability (expectation ``p*prev + (1-p)*new``).
    """

    kind: str
    input_size: int
    hidden_size: int
    w_ih: PackedMatrix
    w_hh: PackedMatrix
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


def pack_rnn(model: nn.Module, block: Block = "auto", nparts: int = 1) -> PackedRNN:
    """Pack a trained (pruned or dense) EGRU/GRU/LSTM for the sparse runtime.

    Args:
        model: ``dualsparse.models.EGRU``/``GRU``/``LSTM`` or ``torch.nn.GRU``/``LSTM``
            (unidirectional, no projection). Pruned weights must be exact zeros (as the
            pruning masks leave them).
        block: tile shape of every weight matrix (see the module docstring), or ``"auto"``
            (per matrix, :func:`choose_block`).
        nparts: row ranges per matrix (for multi-threaded accumulation).
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
            w_ih=pack_matrix(w_ih, block, nparts, f"weight_ih_l{k}"),
            w_hh=pack_matrix(w_hh, block, nparts, f"weight_hh_l{k}"),
            b_ih=_np(b_ih, g), b_hh=_np(b_hh, g), threshold=theta,
            reset_mode=reset, events=events, zoneout=zone))
    if layers[0].input_size != input_size:
        raise ValueError("inconsistent input size in the model's first layer")
    return PackedRNN(layers)


__all__ = ["AUTO_SCATTER_COST", "NUM_GATES", "PANEL_ROWS", "PackedLayer", "PackedMatrix",
           "PackedRNN", "PanelMatrix", "choose_block", "model_kind", "pack_matrix", "pack_panels",
           "pack_rnn"]
