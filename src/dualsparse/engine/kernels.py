"""Numba accumulate kernels of the event-driven engine (float32, ``fastmath`` off, cached).

One kernel family: **column-major, multi-vector event accumulate**. For ``n`` vectors (the
tokens of a segment, the sequences of a batch, or one vector when streaming)::

    out[v, :] += W[:, idx[v, :cnt[v]]] @ X[v, idx[v, :cnt[v]]]      for every v

Each vector has its own list of active (nonzero) columns, so the work is proportional to the
nonzeros of each vector. The rows are processed in *groups* of row panels (parallel over
groups with ``prange``); inside a group every vector is finished before the next, so the
weights of the group (sized to stay in L2) are read from memory once for all vectors and
the group's slice of each output row stays in L1.

Within a vector, the columns are added in the order of its active list, to each output row
in ascending column order, whatever the group size or thread count: the results are
bitwise identical across groupings and threads.

Layouts: ``X`` ``(n, C)``, ``out`` ``(n, rows_padded)``, ``idx`` ``(n, >= max cnt)`` int32,
``cnt`` ``(n,)`` int32, all C-contiguous. Packed formats: :mod:`dualsparse.engine.formats`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

ZERO = np.float32(0.0)
_OPTS = {"cache": True, "fastmath": False, "nogil": True}


@njit(**_OPTS)
def active_lists(x: np.ndarray, idx: np.ndarray, cnt: np.ndarray) -> int:
    """Per row ``v`` of ``x`` ``(n, C)``, write its nonzero columns into ``idx[v]`` and their
    number into ``cnt[v]``; return the total."""
    total = 0
    for v in range(x.shape[0]):
        k = 0
        row = x[v]
        for j in range(x.shape[1]):
            if row[j] != ZERO:
                idx[v, k] = j
                k += 1
        cnt[v] = k
        total += k
    return total


@njit(**_OPTS)
def _group_tiles(panel_ptr: np.ndarray, indices: np.ndarray, data: np.ndarray, br: int,
                 bc: int, p0: int, p1: int, x: np.ndarray, idx: np.ndarray, cnt: np.ndarray,
                 out: np.ndarray) -> None:
    """Panels ``[p0, p1)`` of a tiled matrix (any tile shape) for every vector."""
    for v in range(x.shape[0]):
        o = out[v]
        xv = x[v]
        for a in range(cnt[v]):
            j = idx[v, a]
            xj = xv[j]
            bj = j // bc
            c = j - bj * bc
            if br == 16 and bc == 1:
                for t in range(panel_ptr[p0, bj], panel_ptr[p1, bj]):
                    r0 = np.int64(indices[t]) * 16
                    ov = o[r0:r0 + 16]
                    d = data[t * 16:t * 16 + 16]
                    for r in range(16):
                        ov[r] += d[r] * xj
            elif br == 1 and bc == 1:
                for t in range(panel_ptr[p0, bj], panel_ptr[p1, bj]):
                    o[indices[t]] += data[t] * xj
            elif br == 4 and bc == 4:
                for t in range(panel_ptr[p0, bj], panel_ptr[p1, bj]):
                    r0 = np.int64(indices[t]) * 4
                    base = (t * 4 + c) * 4
                    ov = o[r0:r0 + 4]
                    d = data[base:base + 4]
                    for r in range(4):
                        ov[r] += d[r] * xj
            else:
                for t in range(panel_ptr[p0, bj], panel_ptr[p1, bj]):
                    r0 = np.int64(indices[t]) * br
                    base = (t * bc + c) * br
                    for r in range(br):
                        o[r0 + r] += data[base + r] * xj


@njit(**_OPTS)
def _group_dense(data: np.ndarray, rows_padded: int, r0: int, r1: int, x: np.ndarray,
                 idx: np.ndarray, cnt: np.ndarray, out: np.ndarray) -> None:
    """Rows ``[r0, r1)`` (multiples of 16) of a dense column-major matrix ``data``
    ``(C * rows_padded,)`` for every vector: 16-long SIMD axpys."""
    for v in range(x.shape[0]):
        o = out[v]
        xv = x[v]
        for a in range(cnt[v]):
            j = idx[v, a]
            xj = xv[j]
            col = np.int64(j) * rows_padded
            for s in range(r0, r1, 16):
                ov = o[s:s + 16]
                d = data[col + s:col + s + 16]
                for r in range(16):
                    ov[r] += d[r] * xj


def _accumulate_tiles(panel_ptr: np.ndarray, indices: np.ndarray, data: np.ndarray, br: int,
                      bc: int, group: int, x: np.ndarray, idx: np.ndarray, cnt: np.ndarray,
                      out: np.ndarray) -> None:
    """Tiled/CSC matrix (``panel_ptr`` ``(n_panels + 1, n_block_cols)``): ``out += W X`` by
    event columns, ``group`` panels per work item (see the module docstring)."""
    npan = panel_ptr.shape[0] - 1
    ngroups = (npan + group - 1) // group
    for g in prange(ngroups):
        p0 = g * group
        p1 = min(p0 + group, npan)
        _group_tiles(panel_ptr, indices, data, br, bc, p0, p1, x, idx, cnt, out)


def _accumulate_dense(data: np.ndarray, rows_padded: int, group_rows: int, x: np.ndarray,
                      idx: np.ndarray, cnt: np.ndarray, out: np.ndarray) -> None:
    """Dense column-major matrix: as :func:`accumulate_tiles` with ``group_rows`` rows (a
    multiple of 16) per work item."""
    ngroups = (rows_padded + group_rows - 1) // group_rows
    for g in prange(ngroups):
        r0 = g * group_rows
        r1 = min(r0 + group_rows, rows_padded)
        _group_dense(data, rows_padded, r0, r1, x, idx, cnt, out)


#: Serial and ``prange``-parallel builds of the same kernels (identical results).
accumulate_tiles = njit(**_OPTS)(_accumulate_tiles)
accumulate_tiles_parallel = njit(parallel=True, **_OPTS)(_accumulate_tiles)
accumulate_dense = njit(**_OPTS)(_accumulate_dense)
accumulate_dense_parallel = njit(parallel=True, **_OPTS)(_accumulate_dense)


@njit(**_OPTS)
def add_bias(out: np.ndarray, bias: np.ndarray) -> None:
    """``out[v, :len(bias)] = bias`` for every row ``v`` (accumulator reset)."""
    nb = bias.shape[0]
    for v in range(out.shape[0]):
        o = out[v]
        for r in range(nb):
            o[r] = bias[r]


__all__ = ["accumulate_dense", "accumulate_dense_parallel", "accumulate_tiles",
           "accumulate_tiles_parallel", "active_lists", "add_bias"]
