"""Numba accumulate kernels of the event-driven engine (float32, ``fastmath`` off, cached).

One kernel family: **column-major, multi-vector event accumulate**. For ``n`` vectors (the
tokens of a segment, the sequences of a batch, or one vector when streaming)::

    out[v, :] += W[:, idx[v, :cnt[v]]] @ X[v, idx[v, :cnt[v]]]      for every v

Each vector has its own list of active (nonzero) columns, so the work is proportional to the
nonzeros of each vector. The rows are processed in *groups* of row panels (parallel over
groups with ``prange``), every vector finished inside a group before the next. Each output
receives its terms in the order of the vector's active list whatever the grouping, thread
count or mode: the results are bitwise identical across them.

Layouts: ``X`` ``(n, C)``, ``out`` ``(n, rows_padded)``, ``idx`` ``(n, >= max cnt)`` int32,
``cnt`` ``(n,)`` int32, all C-contiguous. Packed formats: :mod:`dualsparse.engine.formats`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import FunctionType
from typing import Any

import numpy as np
from numba import njit, prange

from dualsparse.engine.simd import axpy16, prefetch, vload, vmadd, vstore
from dualsparse.engine.tile_kernels import NJIT_OPTIONS, PREFETCH_COLUMNS, ZERO, group_tiles


@njit(**NJIT_OPTIONS)
def active_lists(x: np.ndarray, idx: np.ndarray, cnt: np.ndarray) -> int:
    """Per row ``v`` of ``x`` ``(n, C)``, write its nonzero columns into ``idx[v]`` (``idx``
    ``(n, >= C)``) and their number into ``cnt[v]``; return the total.

    Branch-free: every column is written at the current count, which only a nonzero advances
    (a data-dependent branch mispredicts on a quarter of the units at 25% activity: 3.1 vs
    0.4 ns per unit, docs/engine.md)."""
    total = 0
    for v in range(x.shape[0]):
        k = 0
        row = x[v]
        iv = idx[v]
        for j in range(x.shape[1]):
            iv[k] = j
            k += row[j] != ZERO
        cnt[v] = k
        total += k
    return total


@njit(inline="always", **NJIT_OPTIONS)
def _add_column(a0, a1, a2, a3, data: np.ndarray, col: int, xj: np.float32) -> tuple:
    """The four 16-row accumulators of a 64-row panel plus ``data[col:col + 64] * xj``."""
    return (vmadd(a0, data, col, xj), vmadd(a1, data, col + 16, xj),
            vmadd(a2, data, col + 32, xj), vmadd(a3, data, col + 48, xj))


@njit(inline="always", **NJIT_OPTIONS)
def _load_panel(o: np.ndarray, s: int) -> tuple:
    """``o[s:s + 64]`` as four :data:`~dualsparse.engine.simd.f32x16` accumulators."""
    return vload(o, s), vload(o, s + 16), vload(o, s + 32), vload(o, s + 48)


@njit(inline="always", **NJIT_OPTIONS)
def _store_panel(o: np.ndarray, s: int, a0, a1, a2, a3) -> None:
    """``o[s:s + 64] =`` the four accumulators."""
    vstore(o, s, a0)
    vstore(o, s + 16, a1)
    vstore(o, s + 32, a2)
    vstore(o, s + 48, a3)


@njit(**NJIT_OPTIONS)
def _panel_dense(data: np.ndarray, p: int, x: np.ndarray, idx: np.ndarray, cnt: np.ndarray,
                 out: np.ndarray, bias: np.ndarray, from_bias: bool) -> None:
    """Row panel ``p`` (64 rows) of a dense panel-major matrix ``data`` ``(n_panels, C, 64)``
    for every vector: the panel's 64 outputs of a vector stay in four SIMD registers while
    its active columns are added, so the outputs are read and written once per vector, and
    the panel's weights (``64 * C`` floats, contiguous) stay in cache from one vector to the
    next. Vectors go in pairs, their active lists stepped together (two independent chains,
    each vector's sum in its own order; 5-20% faster). An odd last vector, or a single one,
    goes alone (:func:`_panel_from`). ``from_bias``: the accumulators start from ``bias``
    (``(rows_padded,)``) instead of ``out`` (``out = bias + W x``, ``out`` written once)."""
    s = np.int64(p) * 64
    base = s * x.shape[1]
    nv = x.shape[0]
    v = 0
    while v + 2 <= nv:
        o, q = out[v], out[v + 1]
        xv, xw = x[v], x[v + 1]
        a0, a1, a2, a3 = _load_panel(bias if from_bias else o, s)
        b0, b1, b2, b3 = _load_panel(bias if from_bias else q, s)
        n, m = cnt[v], cnt[v + 1]
        both = min(n, m)
        for a in range(both):
            j = idx[v, a]
            i = idx[v + 1, a]
            a0, a1, a2, a3 = _add_column(a0, a1, a2, a3, data, base + np.int64(j) * 64, xv[j])
            b0, b1, b2, b3 = _add_column(b0, b1, b2, b3, data, base + np.int64(i) * 64, xw[i])
        for a in range(both, n):
            j = idx[v, a]
            a0, a1, a2, a3 = _add_column(a0, a1, a2, a3, data, base + np.int64(j) * 64, xv[j])
        for a in range(both, m):
            i = idx[v + 1, a]
            b0, b1, b2, b3 = _add_column(b0, b1, b2, b3, data, base + np.int64(i) * 64, xw[i])
        _store_panel(o, s, a0, a1, a2, a3)
        _store_panel(q, s, b0, b1, b2, b3)
        v += 2
    if v < nv:
        _panel_from(data, p, v, x, idx, cnt, out, bias, from_bias)


@njit(**NJIT_OPTIONS)
def _panel_from(data: np.ndarray, p: int, v0: int, x: np.ndarray, idx: np.ndarray,
                cnt: np.ndarray, out: np.ndarray, bias: np.ndarray, from_bias: bool) -> None:
    """Row panel ``p`` of a dense panel-major matrix for vectors ``v0, v0 + 1, ...`` one at a
    time, the weights of the column :data:`PREFETCH_COLUMNS` ahead prefetched (``bias``,
    ``from_bias``: as :func:`_panel_dense`)."""
    s = np.int64(p) * 64
    base = s * x.shape[1]
    for v in range(v0, x.shape[0]):
        o = out[v]
        xv = x[v]
        a0, a1, a2, a3 = _load_panel(bias if from_bias else o, s)
        n = cnt[v]
        for a in range(n):
            if a + PREFETCH_COLUMNS < n:  # a later column's 64 panel rows: 4 cache lines
                nxt = base + np.int64(idx[v, a + PREFETCH_COLUMNS]) * 64
                prefetch(data, nxt)
                prefetch(data, nxt + 16)
                prefetch(data, nxt + 32)
                prefetch(data, nxt + 48)
            j = idx[v, a]
            a0, a1, a2, a3 = _add_column(a0, a1, a2, a3, data, base + np.int64(j) * 64, xv[j])
        _store_panel(o, s, a0, a1, a2, a3)


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
        group_tiles(panel_ptr, indices, data, br, bc, p0, p1, x, idx, cnt, out)


def _accumulate_dense(data: np.ndarray, rows_padded: int, x: np.ndarray, idx: np.ndarray,
                      cnt: np.ndarray, out: np.ndarray) -> None:
    """Dense panel-major matrix (``rows_padded`` a multiple of 64): as
    :func:`accumulate_tiles`, one 64-row panel per work item (:func:`_panel_dense`)."""
    if x.shape[0] == 1:
        for p in prange(rows_padded // 64):
            _panel_from(data, p, 0, x, idx, cnt, out, out[0], False)
    else:
        for p in prange(rows_padded // 64):
            _panel_dense(data, p, x, idx, cnt, out, out[0], False)


def _accumulate_dense_bias(data: np.ndarray, rows_padded: int, bias: np.ndarray,
                           x: np.ndarray, idx: np.ndarray, cnt: np.ndarray,
                           out: np.ndarray) -> None:
    """``out = bias + W X`` for a dense panel-major matrix (``bias`` ``(rows_padded,)``): as
    :func:`accumulate_dense`, the accumulators starting from the bias, so that ``out`` is
    written once and never read (a separate bias pass moves every output row through the
    caches three times: 40 KB each per token for the paper decoder)."""
    for p in prange(rows_padded // 64):
        _panel_dense(data, p, x, idx, cnt, out, bias, True)


@njit(**NJIT_OPTIONS)
def _block_row(rowptr: np.ndarray, cols: np.ndarray, data: np.ndarray, i: int, x: np.ndarray,
               out: np.ndarray, bias: np.ndarray, from_bias: bool) -> None:
    """Block row ``i`` (16 rows) of a row-major 16x1-tile matrix for every vector, four
    vectors at a time: each weight tile is loaded once into a SIMD register and multiplied
    into four accumulators (registers) by the four vectors' inputs. All tiles of the row are
    added (an input that is zero adds zero), in column order. ``from_bias``: the
    accumulators start from ``bias[16 i:16 i + 16]`` instead of ``out`` (``out = bias + W x``)."""
    s = np.int64(i) * 16
    n = x.shape[0]
    t0, t1 = rowptr[i], rowptr[i + 1]
    v = 0
    while v + 4 <= n:
        o0, o1, o2, o3 = out[v], out[v + 1], out[v + 2], out[v + 3]
        x0, x1, x2, x3 = x[v], x[v + 1], x[v + 2], x[v + 3]
        if from_bias:
            a0 = a1 = a2 = a3 = vload(bias, s)
        else:
            a0, a1, a2, a3 = vload(o0, s), vload(o1, s), vload(o2, s), vload(o3, s)
        for t in range(t0, t1):
            j = cols[t]
            d = np.int64(t) * 16
            a0 = vmadd(a0, data, d, x0[j])
            a1 = vmadd(a1, data, d, x1[j])
            a2 = vmadd(a2, data, d, x2[j])
            a3 = vmadd(a3, data, d, x3[j])
        vstore(o0, s, a0)
        vstore(o1, s, a1)
        vstore(o2, s, a2)
        vstore(o3, s, a3)
        v += 4
    while v < n:
        o = out[v]
        xv = x[v]
        a = vload(bias if from_bias else o, s)
        for t in range(t0, t1):
            a = vmadd(a, data, np.int64(t) * 16, xv[cols[t]])
        vstore(o, s, a)
        v += 1


def _accumulate_rows(rowptr: np.ndarray, cols: np.ndarray, data: np.ndarray, x: np.ndarray,
                     out: np.ndarray, bias: np.ndarray, from_bias: bool) -> None:
    """Row-major 16x1 tiles (:class:`dualsparse.engine.rows.RowMatrix`): ``out += x W^T``
    (``from_bias``: ``out = bias + x W^T``, ``bias`` ``(rows_padded,)``) over all stored
    tiles, one block row per work item (:func:`_block_row`)."""
    for i in prange(rowptr.shape[0] - 1):
        _block_row(rowptr, cols, data, i, x, out, bias, from_bias)


@njit(**NJIT_OPTIONS)
def _columns_dense(data: np.ndarray, rows_padded: int, r0: int, r1: int, x: np.ndarray,
                   idx: np.ndarray, cnt: np.ndarray, out: np.ndarray) -> None:
    """Rows ``[r0, r1)`` of a dense **column-major** matrix ``data`` ``(C * rows_padded,)``
    (``W^T``) for every vector, column by column: each active column's rows are one
    contiguous run (streams from memory well: for single vectors)."""
    for v in range(x.shape[0]):
        o = out[v]
        xv = x[v]
        n = cnt[v]
        for a in range(n):
            if a + PREFETCH_COLUMNS < n:
                nxt = np.int64(idx[v, a + PREFETCH_COLUMNS]) * rows_padded + r0
                prefetch(data, nxt)
                prefetch(data, nxt + 16)
            j = idx[v, a]
            xj = xv[j]
            col = np.int64(j) * rows_padded
            for s in range(r0, r1, 16):
                axpy16(o, np.int64(s), data, col + s, xj)


def _accumulate_dense_columns(data: np.ndarray, rows_padded: int, group_rows: int,
                              x: np.ndarray, idx: np.ndarray, cnt: np.ndarray,
                              out: np.ndarray) -> None:
    """As :func:`accumulate_dense` for the column-major copy ``data``, column by column over
    row groups of ``group_rows`` (a multiple of 64) per work item (:func:`_columns_dense`)."""
    for g in prange((rows_padded + group_rows - 1) // group_rows):
        r0 = g * group_rows
        _columns_dense(data, rows_padded, r0, min(r0 + group_rows, rows_padded), x, idx, cnt,
                       out)


def _parallel_build(fn: Callable) -> Any:
    """``njit(parallel=True)`` of a copy of ``fn`` named ``<name>_parallel``: numba's cache
    keys a function by name and bytecode, not by its compile flags, so a serial and a
    parallel build of one function would share one entry (``tests/engine/test_kernel_cache.py``).
    """
    copy = FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_parallel",
                        fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + "_parallel"
    copy.__doc__ = fn.__doc__
    return njit(parallel=True, **NJIT_OPTIONS)(copy)


#: Serial and ``prange``-parallel builds of the same kernels (identical results).
accumulate_tiles = njit(**NJIT_OPTIONS)(_accumulate_tiles)
accumulate_tiles_parallel = _parallel_build(_accumulate_tiles)
accumulate_dense = njit(**NJIT_OPTIONS)(_accumulate_dense)
accumulate_dense_parallel = _parallel_build(_accumulate_dense)
accumulate_dense_bias = njit(**NJIT_OPTIONS)(_accumulate_dense_bias)
accumulate_dense_bias_parallel = _parallel_build(_accumulate_dense_bias)
accumulate_dense_columns = njit(**NJIT_OPTIONS)(_accumulate_dense_columns)
accumulate_dense_columns_parallel = _parallel_build(_accumulate_dense_columns)
accumulate_rows = njit(**NJIT_OPTIONS)(_accumulate_rows)
accumulate_rows_parallel = _parallel_build(_accumulate_rows)


def balanced_rows(rows_padded: int, most: int, threads: int, multiple: int) -> int:
    """Rows per work item: at most ``most`` (rounded down to ``multiple``), a multiple of
    ``multiple``, and as many items of about equal size as a multiple of ``threads`` (the
    last item is never a sliver that leaves a thread idle)."""
    most = max(multiple, most // multiple * multiple)
    items = -(-rows_padded // most)
    items = -(-items // threads) * threads
    per = -(-rows_padded // items)
    return -(-per // multiple) * multiple


def single_vector_seconds(panels: np.ndarray, columns: np.ndarray, rows_padded: int,
                          cols: int, group: int, activity: float = 0.25, trials: int = 4,
                          rounds: int = 3) -> tuple[float, float]:
    """Seconds of one single-vector product of a dense matrix through its panel-major
    ``panels`` and through its column-major ``columns`` copy (best of ``rounds``, serial):
    ``trials`` random vectors at ``activity``, each with other active columns, so that the
    matrix is read as a stream of different tokens reads it, not from a cache that one
    repeated vector warms."""
    rng = np.random.default_rng(0)
    x = (rng.random((trials, 1, cols)) < activity).astype(np.float32)
    idx, cnt = np.zeros((trials, 1, cols), np.int32), np.zeros((trials, 1), np.int32)
    for t in range(trials):
        active_lists(x[t], idx[t], cnt[t])
    out = np.zeros((1, rows_padded), np.float32)
    best = [np.inf, np.inf]
    for _ in range(rounds):
        for k in range(2):
            t0 = time.perf_counter()
            for t in range(trials):
                if k == 0:
                    accumulate_dense(panels, rows_padded, x[t], idx[t], cnt[t], out)
                else:
                    accumulate_dense_columns(columns, rows_padded, group, x[t], idx[t], cnt[t],
                                             out)
            best[k] = min(best[k], (time.perf_counter() - t0) / trials)
    return best[0], best[1]


#: ``fmt`` codes of :func:`accumulate_event` (each format's ``kernel_args`` picks one): tiles
#: or CSC; dense register panels; a dense matrix's column-major copy, column by column.
FORMAT_CODES = {"tiles": 0, "dense": 1, "dense_columns": 2}


@njit(**NJIT_OPTIONS)
def accumulate_event(fmt: int, parallel: bool, panel_ptr: np.ndarray, indices: np.ndarray,
                     data: np.ndarray, br: int, bc: int, rows_padded: int, group: int,
                     x: np.ndarray, idx: np.ndarray, cnt: np.ndarray, out: np.ndarray) -> None:
    """The one dispatch of the event-accumulate kernels: ``(fmt, parallel, panel_ptr, indices,
    data, br, bc, rows_padded, group)`` are a format's ``kernel_args(n, threads)``; ``x``,
    ``idx``, ``cnt``, ``out`` as in the module docstring."""
    if fmt == 0:
        if parallel:
            accumulate_tiles_parallel(panel_ptr, indices, data, br, bc, group, x, idx, cnt, out)
        else:
            accumulate_tiles(panel_ptr, indices, data, br, bc, group, x, idx, cnt, out)
    elif fmt == 1:
        if parallel:
            accumulate_dense_parallel(data, rows_padded, x, idx, cnt, out)
        else:
            accumulate_dense(data, rows_padded, x, idx, cnt, out)
    elif parallel:
        accumulate_dense_columns_parallel(data, rows_padded, group, x, idx, cnt, out)
    else:
        accumulate_dense_columns(data, rows_padded, group, x, idx, cnt, out)


@njit(**NJIT_OPTIONS)
def add_bias(out: np.ndarray, bias: np.ndarray) -> None:
    """``out[v, :len(bias)] = bias`` for every row ``v`` (accumulator reset)."""
    nb = bias.shape[0]
    for v in range(out.shape[0]):
        o = out[v]
        for r in range(nb):
            o[r] = bias[r]


__all__ = ["FORMAT_CODES", "accumulate_dense", "accumulate_dense_bias",
           "accumulate_dense_bias_parallel", "accumulate_dense_columns",
           "accumulate_dense_columns_parallel", "accumulate_dense_parallel", "accumulate_event",
           "accumulate_rows", "accumulate_rows_parallel", "accumulate_tiles",
           "accumulate_tiles_parallel", "active_lists", "add_bias", "balanced_rows",
           "single_vector_seconds"]
