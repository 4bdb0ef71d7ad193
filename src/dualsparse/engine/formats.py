"""Packed weight formats for event-driven (column) access; each owns ``accumulate`` and ``check``.

A weight matrix ``W`` ``(R, C)`` (rows = stacked gate outputs ``G*H`` or a vocabulary,
columns = input features or recurrent units) is stored *by column*: for an active input
``x_j`` the engine adds ``x_j * W[:, j]`` to the pre-activations, touching only the stored
weights of that column. Two formats share :class:`PackedFormat`:

* :class:`PackedMatrix` -- block-compressed columns: ``br x bc`` tiles, stored whole when any
  weight is nonzero (``(1, 1)`` is CSC, ``(16, 1)`` row blocks, ``(4, 4)`` Narang blocks),
  sorted by row within a block column; ``panel_ptr`` cuts every block column at row panels,
  so that threads own disjoint row groups.
* :class:`DenseMatrix` -- all weights, in 64-row panels (register-panel kernels, a GEMM for
  mostly active inputs) and, for single vectors, a column-major copy.

:func:`dualsparse.engine.pack.choose_format` picks one per matrix (``block="auto"``); the
kernels are in :mod:`dualsparse.engine.kernels`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch

from dualsparse.engine import kernels as K
from dualsparse.engine.arrays import aligned_copy, as_matrix, check_array
from dualsparse.validation import check_block, check_int

#: Cost of one scattered CSC update relative to one stored value of a 16-long SIMD axpy
#: (measured 1.5-2.7x, docs/engine.md): ``choose_format`` uses ``(16, 1)`` tiles when they
#: store at most this many values per nonzero weight, else CSC.
AUTO_SCATTER_COST = 3.0
#: ``choose_format`` stores a matrix densely from this fraction of nonzero weights on.
DENSE_MIN_DENSITY = 0.9
#: Row panel height (rounded up to a multiple of the tile height).
PANEL_ROWS = 64
#: Most bytes of packed weights per work item when several vectors share them. Each group
#: costs every vector a pointer lookup per active column: a 2.2 MB 16x1 matrix was 1.25-1.4x
#: faster as one group than in 1 MB groups (2-64 vectors; docs/engine.md).
GROUP_BYTES = 16 * 1024 * 1024
#: Most rows per work item (their accumulator slice, 16 KB of float32, stays in L1).
GROUP_MAX_ROWS = 4096
#: Products of matrices with fewer packed bytes run on one thread even when ``threads > 1``
#: (a parallel region costs a few microseconds).
PARALLEL_MIN_BYTES = 512 * 1024
#: :class:`DenseMatrix` uses one GEMM when at least this fraction of the inputs of
#: ``n >= GEMM_MIN_VECTORS`` vectors is active; fewer vectors always take the event kernels
#: (one all-active vector, 0.8-22 MB: 1.04-1.66x faster than PyTorch's product over the
#: panels alone, ``benchmarks/bench_single_vector.py``).
GEMM_MIN_ACTIVITY = 0.35
GEMM_MIN_VECTORS = 4
#: A single vector through a :class:`DenseMatrix` of at least this many bytes goes column by
#: column over its column-major copy (streamed from memory; paper decoder, 30 MB: 380 vs 880
#: us/token from panels); below :data:`COLUMNS_TRIAL_BYTES`, in register panels. Between the
#: two the faster one on this machine, timed once (demo decoder, 5 MB: panels 18.8 vs 22.1 us
#: on an AMD EPYC, columns 50 vs 87 on an Intel Xeon; docs/engine.md).
COLUMNS_MIN_BYTES = 8 * 1024 * 1024
COLUMNS_TRIAL_BYTES = 1024 * 1024

Block = tuple[int, int] | str
#: The unused index arrays of the dense kernels' arguments (never written).
_NONE = np.zeros((1, 1), np.int32)


@dataclass
class PackedFormat(ABC):
    """Shared part of the packed formats: the dense shape, its nonzero count, the derived
    sizes, and the interface every format implements (``rows_padded``, ``nbytes``,
    ``accumulate``, ``kernel_args``, ``check``, ``to_dense``; ``data`` holds the values)."""

    shape: tuple[int, int]
    nnz: int

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[1]

    @property
    def density(self) -> float:
        """Fraction of nonzero weights of the dense matrix."""
        return self.nnz / (self.shape[0] * self.shape[1])

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the dense float32 matrix."""
        return 4 * self.shape[0] * self.shape[1]

    @property
    def stored_values(self) -> int:
        """Values stored (zeros inside stored tiles included)."""
        return int(self.data.size)

    @property
    @abstractmethod
    def rows_padded(self) -> int:
        """Length of an accumulator row (rows rounded up to the format's granularity)."""

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Bytes of the packed arrays."""

    def accumulate(self, x: np.ndarray, idx: np.ndarray, cnt: np.ndarray, out: np.ndarray,
                   threads: int = 1) -> None:
        """``out[v] += W[:, idx[v, :cnt[v]]] @ x[v, idx[v, :cnt[v]]]`` for every vector ``v``.

        Args:
            x: ``(n, cols)`` float32; idx: ``(n, >= max cnt)`` int32 active columns; cnt:
                ``(n,)`` int32; out: ``(n, rows_padded)`` float32 accumulators (C-contiguous).
            threads: > 1 runs row groups on parallel threads (identical results) for
                matrices of at least :data:`PARALLEL_MIN_BYTES`.
        """
        self._check_accumulate_args(x, idx, cnt, out)
        self.accumulate_unchecked(x, idx, cnt, out, threads)

    @abstractmethod
    def accumulate_unchecked(self, x: np.ndarray, idx: np.ndarray, cnt: np.ndarray,
                             out: np.ndarray, threads: int = 1) -> None:
        """:meth:`accumulate` without the argument checks (for the runtime's inner loop,
        whose buffers are built to fit; a wrong shape here is undefined behaviour)."""

    @abstractmethod
    def kernel_args(self, n_vectors: int, threads: int = 1) -> tuple:
        """Arguments of :func:`dualsparse.engine.kernels.accumulate_event`."""

    @abstractmethod
    def check(self) -> None:
        """Validate every invariant of the format (``ValueError`` naming the field)."""

    @abstractmethod
    def to_dense(self) -> np.ndarray:
        """The dense float32 matrix ``(rows, cols)``."""

    def _check_accumulate_args(self, x: np.ndarray, idx: np.ndarray, cnt: np.ndarray,
                               out: np.ndarray) -> None:
        n = x.shape[0]
        if x.ndim != 2 or x.shape[1] != self.cols or x.dtype != np.float32:
            raise ValueError(f"x must be float32 (n, {self.cols}), got {x.dtype} {x.shape}")
        if out.shape != (n, self.rows_padded) or out.dtype != np.float32:
            raise ValueError(f"out must be float32 ({n}, {self.rows_padded}), got {out.dtype} "
                             f"{out.shape}")
        if idx.ndim != 2 or idx.shape[0] != n or cnt.shape != (n,):
            raise ValueError(f"idx must be (n, >=max cnt) and cnt (n,) for n={n}")


@dataclass
class PackedMatrix(PackedFormat):
    """A weight matrix ``(rows, cols)`` packed by (block) columns.

    Attributes:
        block: ``(br, bc)``; ``(1, 1)`` is plain CSC.
        indptr: ``(n_block_cols + 1,)`` int32: tiles of block column ``J`` are
            ``indptr[J]:indptr[J+1]``, sorted by block row.
        indices: ``(n_tiles,)`` block-row index of each tile (``uint16`` or ``int32``).
        data: ``(n_tiles * bc * br,)`` float32, tile-major, then column, then row.
        panel_ptr: ``(n_panels + 1, n_block_cols)`` int32: tiles of block column ``J`` in row
            panel ``P`` are ``panel_ptr[P, J]:panel_ptr[P+1, J]``.
        panel_rows: rows per panel (a multiple of ``br``).
    """

    block: tuple[int, int] = (1, 1)
    indptr: np.ndarray | None = None
    indices: np.ndarray | None = None
    data: np.ndarray | None = None
    panel_ptr: np.ndarray | None = None
    panel_rows: int = PANEL_ROWS

    @property
    def rows_padded(self) -> int:
        """Length of an accumulator row: rows rounded up to a multiple of ``br``."""
        return math.ceil(self.shape[0] / self.block[0]) * self.block[0]

    @property
    def n_panels(self) -> int:
        return self.panel_ptr.shape[0] - 1

    @property
    def nbytes(self) -> int:
        """Bytes of the packed arrays (values, indices, pointers)."""
        return int(self.indptr.nbytes + self.indices.nbytes + self.data.nbytes
                   + self.panel_ptr.nbytes)

    def column_nnz(self) -> np.ndarray:
        """Stored values per input column ``(cols,)`` (what one active column costs)."""
        per_block_col = np.diff(self.indptr).astype(np.int64) * self.block[0]
        return np.repeat(per_block_col, self.block[1])[: self.cols]

    def _group_rows(self, n_vectors: int, threads: int) -> int:
        """Rows per work item: weights within :data:`GROUP_BYTES` when several vectors share
        them, accumulator slices within :data:`GROUP_MAX_ROWS`, a multiple of ``threads``
        items of about equal size."""
        rows = min(self.rows_padded, GROUP_MAX_ROWS)
        if n_vectors > 1:
            per_row = max(1.0, 4.0 * self.stored_values / self.rows_padded)
            rows = min(rows, int(GROUP_BYTES / per_row))
        return K.balanced_rows(self.rows_padded, rows, threads, self.panel_rows)

    def group(self, n_vectors: int, threads: int = 1) -> int:
        """Panels per work item of :meth:`accumulate` for ``n_vectors`` vectors."""
        return max(1, self._group_rows(n_vectors, threads) // self.panel_rows)

    def kernel_args(self, n_vectors: int, threads: int = 1) -> tuple:
        """Arguments of :func:`dualsparse.engine.kernels.accumulate_event` for ``n_vectors``
        vectors per call (the one place where the kernel is chosen)."""
        par = use_threads(self, threads)
        return (K.FORMAT_CODES["tiles"], par, self.panel_ptr, self.indices, self.data,
                *self.block, self.rows_padded, self.group(n_vectors, threads if par else 1))

    def accumulate_unchecked(self, x: np.ndarray, idx: np.ndarray, cnt: np.ndarray,
                             out: np.ndarray, threads: int = 1) -> None:
        K.accumulate_event(*self.kernel_args(x.shape[0], threads), x, idx, cnt, out)

    def to_dense(self) -> np.ndarray:
        """Unpack into the dense float32 matrix ``(rows, cols)`` (zeros included)."""
        br, bc = self.block
        nbc = len(self.indptr) - 1
        out = np.zeros((self.rows_padded, nbc * bc), dtype=np.float32)
        tiles = self.data.reshape(-1, bc, br)
        for bj in range(nbc):
            for t in range(self.indptr[bj], self.indptr[bj + 1]):
                r0 = int(self.indices[t]) * br
                out[r0:r0 + br, bj * bc:(bj + 1) * bc] = tiles[t].T
        return out[: self.rows, : self.cols]

    def check(self) -> None:
        """Validate every invariant of the format (``ValueError`` naming the field)."""
        br, bc = check_block("block", self.block)
        rows, cols = self.shape
        nbr, nbc = math.ceil(rows / br), math.ceil(cols / bc)
        check_array("indptr", self.indptr, (nbc + 1,), (np.int32,))
        check_array("indices", self.indices, None, (np.uint16, np.int32))
        check_array("data", self.data, (self.indices.size * br * bc,), (np.float32,))
        if self.indptr[0] != 0 or self.indptr[-1] != self.indices.size:
            raise ValueError(f"indptr must run from 0 to n_tiles={self.indices.size}")
        if np.any(np.diff(self.indptr) < 0):
            raise ValueError("indptr must be non-decreasing")
        ind = self.indices.astype(np.int64)
        if ind.size and (ind.min() < 0 or ind.max() >= nbr):
            raise ValueError(f"indices must lie in [0, {nbr}) (block rows)")
        steps = np.diff(ind)
        starts = self.indptr[1:-1]
        inside = np.ones(steps.size, dtype=bool)
        inside[starts[(starts > 0) & (starts <= steps.size)] - 1] = False
        if np.any(steps[inside] <= 0):
            raise ValueError("indices must increase strictly within each block column "
                             "(sorted, no duplicate tiles)")
        if not np.isfinite(self.data).all():
            raise ValueError("data contains NaN or inf")
        if int(np.count_nonzero(self.data)) != self.nnz:
            raise ValueError(f"nnz={self.nnz} does not match the {np.count_nonzero(self.data)} "
                             "nonzero stored values")
        check_int("panel_rows", self.panel_rows, low=br)
        if self.panel_rows % br:
            raise ValueError(f"panel_rows={self.panel_rows} must be a multiple of br={br}")
        npan = math.ceil(nbr * br / self.panel_rows)
        check_array("panel_ptr", self.panel_ptr, (npan + 1, nbc), (np.int32,))
        pp = self.panel_ptr
        if not (np.array_equal(pp[0], self.indptr[:-1])
                and np.array_equal(pp[-1], self.indptr[1:])):
            raise ValueError("panel_ptr must start at indptr[:-1] and end at indptr[1:]")
        if np.any(np.diff(pp, axis=0) < 0):
            raise ValueError("panel_ptr must be non-decreasing over panels")
        # every tile lies in the range panel_ptr gives for its block column and panel
        panel = ind // (self.panel_rows // br)
        col = np.repeat(np.arange(nbc), np.diff(self.indptr))
        t = np.arange(ind.size)
        if np.any((t < pp[panel, col]) | (t >= pp[panel + 1, col])):
            raise ValueError("panel_ptr: a tile lies outside the range of its row panel")


@dataclass
class DenseMatrix(PackedFormat):
    """All weights of ``(rows, cols)``, rows padded with zeros to ``rows_padded`` (a multiple
    of 64), in two layouts for the two access patterns:

    * ``data`` ``(n_panels * cols * 64,)`` float32, **panel-major** ``(n_panels, cols, 64)``:
      panel ``P`` holds ``W[64P:64P+64, :]`` transposed, one contiguous block that the
      register-panel kernel reads for all vectors while it stays in cache (column-major put
      each column on its own page and, at 4096 rows, in the same cache sets: 2x slower).
    * :meth:`columns` ``(cols * rows_padded,)``, **column-major** ``W^T``, built the first
      time a single vector takes it (:meth:`single_by_columns`), then kept (twice the
      bytes): one contiguous run per active column streams from memory best.
    """

    data: np.ndarray | None = None
    _columns: np.ndarray | None = field(default=None, repr=False, compare=False)
    #: ``None`` until the first single vector; then whether single vectors go by columns.
    by_columns: bool | None = field(default=None, repr=False, compare=False)
    _single_args: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def rows_padded(self) -> int:
        return math.ceil(self.shape[0] / 64) * 64

    @property
    def nbytes(self) -> int:
        """Bytes held: the panels, plus the column-major copy once built."""
        return int(self.data.nbytes + (0 if self._columns is None else self._columns.nbytes))

    def column_nnz(self) -> np.ndarray:
        return np.full(self.cols, self.rows_padded, dtype=np.int64)

    def columns(self) -> np.ndarray:
        """The column-major copy ``W^T`` ``(cols * rows_padded,)`` (built once, then kept)."""
        if self._columns is None:
            self._columns = aligned_copy(self._padded().T).reshape(-1)
        return self._columns

    def uses_gemm(self, n_vectors: int, n_active: int) -> bool:
        """Whether :meth:`accumulate` multiplies by GEMM (see :data:`GEMM_MIN_ACTIVITY`)."""
        frac = n_active / max(1, n_vectors * self.cols)
        return n_vectors >= GEMM_MIN_VECTORS and frac >= GEMM_MIN_ACTIVITY

    def accumulate_unchecked(self, x: np.ndarray, idx: np.ndarray, cnt: np.ndarray,
                             out: np.ndarray, threads: int = 1) -> None:
        """One GEMM on PyTorch's ``threads`` threads when :meth:`uses_gemm`, else event
        columns (:meth:`kernel_args`)."""
        n = x.shape[0]
        if self.uses_gemm(n, int(cnt.sum())):
            panels = torch.from_numpy(self.data).view(-1, self.cols, 64)
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:  # (P, n, 64): one GEMM per panel, batched
                prod = torch.matmul(torch.from_numpy(x), panels)
                torch.from_numpy(out).view(n, -1, 64).add_(prod.transpose(0, 1))
            finally:
                torch.set_num_threads(before)
            return
        K.accumulate_event(*self.kernel_args(n, threads), x, idx, cnt, out)

    def kernel_args(self, n_vectors: int, threads: int = 1) -> tuple:
        """Arguments of :func:`dualsparse.engine.kernels.accumulate_event` (event columns):
        register panels for several vectors or a cache-resident matrix, column by column
        for one vector through a large matrix (see :data:`COLUMNS_MIN_BYTES`)."""
        par = use_threads(self, threads)
        if n_vectors == 1 and self.single_by_columns():
            key = threads if par else 1  # the streaming hot path: built once per thread count
            if key not in self._single_args:
                self._single_args[key] = (K.FORMAT_CODES["dense_columns"], par, _NONE, _NONE[0],
                                          self.columns(), 64, 1, self.rows_padded,
                                          self.column_group(key))
            return self._single_args[key]
        return (K.FORMAT_CODES["dense"], par, _NONE, _NONE[0], self.data, 64, 1,
                self.rows_padded, 1)

    def single_by_columns(self) -> bool:
        """Whether single vectors go by columns (decided once, :data:`COLUMNS_MIN_BYTES`)."""
        if self.by_columns is None:
            self.by_columns = self.data.nbytes >= COLUMNS_MIN_BYTES
            if COLUMNS_TRIAL_BYTES <= self.data.nbytes < COLUMNS_MIN_BYTES:
                t = K.single_vector_seconds(self.data, self.columns(), self.rows_padded,
                                            self.cols, self.column_group())
                self.by_columns = t[1] < t[0]
            if not self.by_columns:
                self._columns = None  # built for the trial only
        return self.by_columns

    def column_group(self, threads: int = 1) -> int:
        """Rows per work item (multiple of 64) of the single-vector column kernel: an output
        slice within :data:`GROUP_MAX_ROWS`, a multiple of ``threads`` equal items."""
        return K.balanced_rows(self.rows_padded, GROUP_MAX_ROWS, threads, 64)

    def _padded(self) -> np.ndarray:
        """The stored matrix ``(rows_padded, cols)`` (a copy), padding rows included."""
        return self.data.reshape(-1, self.cols, 64).transpose(0, 2, 1).reshape(-1, self.cols)

    def to_dense(self) -> np.ndarray:
        return np.ascontiguousarray(self._padded()[: self.rows])

    def check(self) -> None:
        """Validate the layout, dtype, zero padding and ``nnz``."""
        rows, cols = self.shape
        check_array("data", self.data, (cols * self.rows_padded,), (np.float32,))
        mat = self._padded()
        if np.any(mat[rows:] != 0):
            raise ValueError("data: padding rows must be zero")
        if not np.isfinite(self.data).all():
            raise ValueError("data contains NaN or inf")
        if int(np.count_nonzero(mat)) != self.nnz:
            raise ValueError(f"nnz={self.nnz} does not match the stored nonzeros")


def use_threads(mat: PackedFormat, threads: int) -> bool:
    """Whether products of ``mat`` run on ``threads > 1`` threads."""
    return threads > 1 and mat.nbytes >= PARALLEL_MIN_BYTES


__all__ = ["AUTO_SCATTER_COST", "COLUMNS_MIN_BYTES", "COLUMNS_TRIAL_BYTES", "DENSE_MIN_DENSITY",
           "GEMM_MIN_ACTIVITY", "PANEL_ROWS", "PARALLEL_MIN_BYTES", "use_threads", "Block",
           "DenseMatrix", "PackedFormat", "PackedMatrix", "as_matrix"]
