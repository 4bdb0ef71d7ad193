"""Row-major 16x1 tiles: the format for products whose inputs are mostly nonzero.

:class:`RowMatrix` stores, for each block row of 16 rows, the 16-value column tiles that have
a nonzero weight (block-sparse rows, BSR with 16x1 blocks), in column order. Its kernel
(:func:`dualsparse.engine.kernels.accumulate_rows`) keeps the 16 outputs of four vectors in
SIMD registers and loads each weight tile once for the four: no accumulator traffic and a
quarter of the weight loads of the column kernels, but every stored tile is used whatever
the input (a zero input adds zero). :class:`dualsparse.engine.lm.SparseLM` uses it for the
first layer's input product, whose inputs are embedding rows (dense).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dualsparse.engine import kernels as K
from dualsparse.engine.arrays import aligned_copy
from dualsparse.engine.formats import PackedFormat, PackedMatrix, as_matrix, use_threads


@dataclass
class RowMatrix(PackedFormat):
    """A weight matrix ``(rows, cols)`` in row-major 16x1 tiles.

    Attributes:
        rowptr: ``(n_block_rows + 1,)`` int32: tiles of block row ``I`` are
            ``rowptr[I]:rowptr[I+1]``, by increasing column.
        col_index: ``(n_tiles,)`` int32 column of each tile.
        data: ``(n_tiles * 16,)`` float32, the 16 rows of each tile.
    """

    rowptr: np.ndarray | None = None
    col_index: np.ndarray | None = None
    data: np.ndarray | None = None

    @property
    def rows_padded(self) -> int:
        return math.ceil(self.shape[0] / 16) * 16

    @property
    def nbytes(self) -> int:
        return int(self.rowptr.nbytes + self.col_index.nbytes + self.data.nbytes)

    def column_nnz(self) -> np.ndarray:
        """Stored values per input column ``(cols,)``."""
        return np.bincount(self.col_index, minlength=self.shape[1]).astype(np.int64) * 16

    def accumulate_unchecked(self, x: np.ndarray, idx: np.ndarray, cnt: np.ndarray,
                             out: np.ndarray, threads: int = 1) -> None:
        """``out[v] += W @ x[v]`` for every vector (all stored tiles; ``idx``/``cnt`` are
        not needed)."""
        fn = K.accumulate_rows_parallel if use_threads(self, threads) else K.accumulate_rows
        fn(self.rowptr, self.col_index, self.data, x, out, out[0], False)

    def kernel_args(self, n_vectors: int, threads: int = 1) -> tuple:
        """Not an event format: a recurrent product (sparse inputs) cannot use it."""
        raise ValueError("RowMatrix serves input products with dense inputs only; pack "
                         "recurrent weights as PackedMatrix or DenseMatrix")

    def to_dense(self) -> np.ndarray:
        out = np.zeros((self.rows_padded, self.shape[1]), dtype=np.float32)
        tiles = self.data.reshape(-1, 16)
        for i in range(len(self.rowptr) - 1):
            for t in range(self.rowptr[i], self.rowptr[i + 1]):
                out[16 * i:16 * i + 16, self.col_index[t]] = tiles[t]
        return out[: self.shape[0]]

    def check(self) -> None:
        """Validate dtypes, shapes, pointers, column ranges and order, padding and ``nnz``."""
        rows, ncols = self.shape
        nbr = math.ceil(rows / 16)
        for name, a, dtype in (("rowptr", self.rowptr, np.int32),
                               ("col_index", self.col_index, np.int32),
                               ("data", self.data, np.float32)):
            if not isinstance(a, np.ndarray) or a.dtype != dtype or not a.flags.c_contiguous:
                raise ValueError(f"{name} must be a C-contiguous {np.dtype(dtype)} array")
        if self.rowptr.shape != (nbr + 1,) or self.rowptr[0] != 0 \
                or self.rowptr[-1] != self.col_index.size or np.any(np.diff(self.rowptr) < 0):
            raise ValueError(f"rowptr must be ({nbr + 1},), non-decreasing, from 0 to n_tiles")
        if self.data.shape != (16 * self.col_index.size,):
            raise ValueError(f"data must have shape ({16 * self.col_index.size},)")
        if self.col_index.size and (self.col_index.min() < 0 or self.col_index.max() >= ncols):
            raise ValueError(f"col_index must lie in [0, {ncols})")
        steps = np.diff(self.col_index.astype(np.int64))
        inside = np.ones(steps.size, dtype=bool)
        starts = self.rowptr[1:-1]
        inside[starts[(starts > 0) & (starts <= steps.size)] - 1] = False
        if np.any(steps[inside] <= 0):
            raise ValueError("col_index must increase strictly within each block row")
        if not np.isfinite(self.data).all():
            raise ValueError("data contains NaN or inf")
        last = np.repeat(np.arange(nbr) == nbr - 1, np.diff(self.rowptr))
        if rows % 16 and np.any(self.data.reshape(-1, 16)[last, rows % 16:] != 0):
            raise ValueError("data: padding rows must be zero")
        if int(np.count_nonzero(self.data)) != self.nnz:
            raise ValueError(f"nnz={self.nnz} does not match the stored nonzeros")


def pack_rows(weight: torch.Tensor | np.ndarray | PackedMatrix,
              name: str = "weight") -> RowMatrix:
    """``weight`` ``(rows, cols)`` (or a packed matrix) in row-major 16x1 tiles, checked."""
    w = weight.to_dense() if isinstance(weight, PackedFormat) else as_matrix(weight, name)
    rows, ncols = w.shape
    nbr = math.ceil(rows / 16)
    padded = np.zeros((nbr * 16, ncols), dtype=np.float32)
    padded[:rows] = w
    tiles = padded.reshape(nbr, 16, ncols).transpose(0, 2, 1)  # (I, C, 16)
    keep = (tiles != 0).any(axis=2)
    rowptr = np.zeros(nbr + 1, dtype=np.int32)
    np.cumsum(keep.sum(axis=1), out=rowptr[1:])
    ii, jj = np.nonzero(keep)  # block rows in order, columns sorted within each
    mat = RowMatrix((rows, ncols), int(np.count_nonzero(w)), rowptr, jj.astype(np.int32),
                    aligned_copy(tiles[ii, jj]).reshape(-1))
    mat.check()
    return mat


__all__ = ["RowMatrix", "pack_rows"]
