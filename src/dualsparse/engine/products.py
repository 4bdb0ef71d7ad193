"""``out = bias + W X``: a product that starts from the bias.

The runtime's input products and a language model's decoder write pre-activations or
logits that start from a bias. Copying the bias into ``out`` and then accumulating moves
every output row through the caches three times (written, read back, written again); for
a segment's outputs, larger than L2, that is memory traffic. The register-panel kernels
(dense panels, row-major 16x1 tiles) instead load their accumulators from the bias and
write ``out`` once. Other formats scatter into ``out`` anyway and take the copy first.
Results are bitwise those of the copy-then-accumulate order.
"""

from __future__ import annotations

import numpy as np

from dualsparse.engine import kernels as K
from dualsparse.engine.arrays import aligned_zeros
from dualsparse.engine.formats import DenseMatrix, PackedFormat, use_threads
from dualsparse.engine.rows import RowMatrix


def bias_rows(bias: np.ndarray, mat: PackedFormat) -> np.ndarray:
    """``bias`` ``(<= rows_padded,)`` zero-padded to ``mat.rows_padded``, 64-byte aligned."""
    if bias.ndim != 1 or bias.shape[0] > mat.rows_padded:
        raise ValueError(f"bias must be 1-D with at most {mat.rows_padded} values (the "
                         f"matrix's padded rows), got shape {bias.shape}")
    out = aligned_zeros(mat.rows_padded)
    out[: bias.shape[0]] = bias
    return out


def product_from_bias(mat: PackedFormat, x: np.ndarray, idx: np.ndarray, cnt: np.ndarray,
                      out: np.ndarray, bias: np.ndarray, threads: int = 1) -> None:
    """``out[v] = bias + W[:, active] x[v, active]`` for every vector (no checks).

    Args:
        mat: any packed format; x, idx, cnt, out: as
            :meth:`~dualsparse.engine.formats.PackedFormat.accumulate`.
        bias: ``(rows_padded,)`` float32 (:func:`bias_rows`).
        threads: as ``accumulate`` (the caller sets numba's thread count).
    """
    n = x.shape[0]
    par = use_threads(mat, threads)
    if isinstance(mat, RowMatrix):
        fn = K.accumulate_rows_parallel if par else K.accumulate_rows
        fn(mat.rowptr, mat.col_index, mat.data, x, out, bias, True)
    elif isinstance(mat, DenseMatrix) and n > 1 and not mat.uses_gemm(n, int(cnt.sum())):
        fn = K.accumulate_dense_bias_parallel if par else K.accumulate_dense_bias
        fn(mat.data, mat.rows_padded, bias, x, idx, cnt, out)
    else:  # scattered updates (tiles, CSC), one vector by columns, or a GEMM
        K.add_bias(out, bias)
        mat.accumulate_unchecked(x, idx, cnt, out, threads)


__all__ = ["bias_rows", "product_from_bias"]
