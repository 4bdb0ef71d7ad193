"""Per-tile-shape loops of the event accumulate (:mod:`dualsparse.engine.kernels`): for the
row panels ``[p0, p1)`` of a tiled or CSC matrix (:class:`~dualsparse.engine.formats.PackedMatrix`)
and every vector, add each active input column's tiles into the output. :func:`group_tiles`
picks the loop for the tile shape; every loop adds a vector's terms in the order of its
active list, so results are bitwise equal whichever loop runs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from dualsparse.engine.simd import axpy16, fma32, prefetch

ZERO = np.float32(0.0)
NJIT_OPTIONS = {"cache": True, "fastmath": False, "nogil": True}
#: Active columns ahead whose weights the kernels prefetch (``llvm.prefetch``): a column's
#: tiles are one short run that the hardware prefetcher does not catch early.
PREFETCH_COLUMNS = 2


@njit(**NJIT_OPTIONS)
def _group_16x1(panel_ptr: np.ndarray, indices: np.ndarray, data: np.ndarray, p0: int,
                p1: int, x: np.ndarray, idx: np.ndarray, cnt: np.ndarray,
                out: np.ndarray) -> None:
    """Panels ``[p0, p1)`` of a ``(16, 1)``-tiled matrix for every vector, one ``axpy16``
    per tile; the first tile and row indices of the column :data:`PREFETCH_COLUMNS` ahead are
    prefetched (the hardware prefetcher follows a column's contiguous tiles; a hint per tile
    cost 14% more time on an Intel Xeon, docs/engine.md)."""
    for v in range(x.shape[0]):
        o = out[v]
        xv = x[v]
        n = cnt[v]
        for a in range(n):
            if a + PREFETCH_COLUMNS < n:
                tn = np.int64(panel_ptr[p0, idx[v, a + PREFETCH_COLUMNS]])
                prefetch(data, tn * 16)
                prefetch(indices, tn)
            j = idx[v, a]
            xj = xv[j]
            for t in range(panel_ptr[p0, j], panel_ptr[p1, j]):
                axpy16(o, np.int64(indices[t]) * 16, data, np.int64(t) * 16, xj)


@njit(**NJIT_OPTIONS)
def _group_csc(panel_ptr: np.ndarray, indices: np.ndarray, data: np.ndarray, p0: int,
               p1: int, x: np.ndarray, idx: np.ndarray, cnt: np.ndarray,
               out: np.ndarray) -> None:
    """Panels ``[p0, p1)`` of a CSC matrix (``(1, 1)`` tiles) for every vector: a scalar
    scatter per stored value, over array slices (no negative-index checks). The values and
    row indices of the column :data:`PREFETCH_COLUMNS` ahead are prefetched, one hint per
    cache line (11-27% less time than two lines, docs/engine.md)."""
    for v in range(x.shape[0]):
        o = out[v]
        xv = x[v]
        n = cnt[v]
        for a in range(n):
            if a + PREFETCH_COLUMNS < n:
                jn = idx[v, a + PREFETCH_COLUMNS]
                tn = np.int64(panel_ptr[p0, jn])
                te = np.int64(panel_ptr[p1, jn])
                for q in range(tn, te, 16):
                    prefetch(data, q)
                for q in range(tn, te, 32):
                    prefetch(indices, q)
            j = idx[v, a]
            xj = xv[j]
            t0 = panel_ptr[p0, j]
            t1 = panel_ptr[p1, j]
            d1 = data[t0:t1]
            i1 = indices[t0:t1]
            for k in range(t1 - t0):
                o[i1[k]] = fma32(d1[k], xj, o[i1[k]])


@njit(**NJIT_OPTIONS)
def _group_br4(panel_ptr: np.ndarray, indices: np.ndarray, data: np.ndarray, bc: int, p0: int,
               p1: int, x: np.ndarray, idx: np.ndarray, cnt: np.ndarray,
               out: np.ndarray) -> None:
    """Panels ``[p0, p1)`` of a ``(4, bc)``-tiled matrix for every vector: the four rows of a
    tile column written out (the generic loop's run-time slices cost 2x for such short
    columns)."""
    for v in range(x.shape[0]):
        o = out[v]
        xv = x[v]
        n = cnt[v]
        for a in range(n):
            if a + PREFETCH_COLUMNS < n:
                tn = np.int64(panel_ptr[p0, idx[v, a + PREFETCH_COLUMNS] // bc])
                prefetch(data, tn * 4 * bc)
                prefetch(indices, tn)
            j = idx[v, a]
            xj = xv[j]
            bj = j // bc
            c = j - bj * bc
            for t in range(panel_ptr[p0, bj], panel_ptr[p1, bj]):
                r0 = np.int64(indices[t]) * 4
                base = (np.int64(t) * bc + c) * 4
                o[r0] = fma32(data[base], xj, o[r0])
                o[r0 + 1] = fma32(data[base + 1], xj, o[r0 + 1])
                o[r0 + 2] = fma32(data[base + 2], xj, o[r0 + 2])
                o[r0 + 3] = fma32(data[base + 3], xj, o[r0 + 3])


@njit(**NJIT_OPTIONS)
def _group_br16k(panel_ptr: np.ndarray, indices: np.ndarray, data: np.ndarray, br: int,
                 bc: int, p0: int, p1: int, x: np.ndarray, idx: np.ndarray, cnt: np.ndarray,
                 out: np.ndarray) -> None:
    """Panels ``[p0, p1)`` of a tiled matrix whose tile height ``br`` is a multiple of 16
    (16x16, 32x32) for every vector: one ``axpy16`` per 16 rows of a tile column."""
    for v in range(x.shape[0]):
        o = out[v]
        xv = x[v]
        n = cnt[v]
        for a in range(n):
            if a + PREFETCH_COLUMNS < n:
                jn = idx[v, a + PREFETCH_COLUMNS]
                tn = np.int64(panel_ptr[p0, jn // bc])
                prefetch(data, (tn * bc + jn % bc) * br)
                prefetch(indices, tn)
            j = idx[v, a]
            xj = xv[j]
            bj = j // bc
            c = j - bj * bc
            for t in range(panel_ptr[p0, bj], panel_ptr[p1, bj]):
                r0 = np.int64(indices[t]) * br
                base = (np.int64(t) * bc + c) * br
                for s in range(0, br, 16):
                    axpy16(o, r0 + s, data, base + s, xj)


@njit(**NJIT_OPTIONS)
def group_tiles(panel_ptr: np.ndarray, indices: np.ndarray, data: np.ndarray, br: int,
                 bc: int, p0: int, p1: int, x: np.ndarray, idx: np.ndarray, cnt: np.ndarray,
                 out: np.ndarray) -> None:
    """Panels ``[p0, p1)`` of a tiled matrix (any tile shape) for every vector.

    ``(16, 1)`` tiles, CSC, 4-row tiles and tiles whose height is a multiple of 16 go to
    their own loops (:func:`_group_16x1`, :func:`_group_csc`, :func:`_group_br4`,
    :func:`_group_br16k`: 1.2-2x faster than this one, docs/engine.md). Other shapes: an axpy
    over array *slices* of run-time length ``br``, which LLVM vectorises behind a run-time
    alias check; the first weights and indices of the column :data:`PREFETCH_COLUMNS` ahead
    are prefetched."""
    if br == 16 and bc == 1:
        _group_16x1(panel_ptr, indices, data, p0, p1, x, idx, cnt, out)
        return
    if br == 1 and bc == 1:
        _group_csc(panel_ptr, indices, data, p0, p1, x, idx, cnt, out)
        return
    if br == 4:
        _group_br4(panel_ptr, indices, data, bc, p0, p1, x, idx, cnt, out)
        return
    if br % 16 == 0:
        _group_br16k(panel_ptr, indices, data, br, bc, p0, p1, x, idx, cnt, out)
        return
    tile = np.int64(br) * bc
    for v in range(x.shape[0]):
        o = out[v]
        xv = x[v]
        n = cnt[v]
        for a in range(n):
            if a + PREFETCH_COLUMNS < n:  # the start of a later column's tiles
                tn = np.int64(panel_ptr[p0, idx[v, a + PREFETCH_COLUMNS] // bc])
                prefetch(data, tn * tile)
                prefetch(data, tn * tile + 16)
                prefetch(indices, tn)
            j = idx[v, a]
            xj = xv[j]
            bj = j // bc
            c = j - bj * bc
            for t in range(panel_ptr[p0, bj], panel_ptr[p1, bj]):
                r0 = np.int64(indices[t]) * br
                base = (np.int64(t) * bc + c) * br
                ov = o[r0:r0 + br]
                d = data[base:base + br]
                for r in range(br):
                    ov[r] = fma32(d[r], xj, ov[r])


__all__ = ["NJIT_OPTIONS", "PREFETCH_COLUMNS", "ZERO", "group_tiles"]
