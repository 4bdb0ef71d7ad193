"""dualsparse.engine: event-driven, weight-sparse CPU inference (numba kernels).

* :mod:`~dualsparse.engine.formats` -- packed formats (tiles/CSC, dense in row panels), each
  with ``accumulate`` and ``check``.
* :mod:`~dualsparse.engine.pack` -- trained recurrent stacks -> packed layers.
* :mod:`~dualsparse.engine.kernels`, :mod:`~dualsparse.engine.gates` -- the multi-vector
  event-accumulate kernels, the fused gate kernels and the recurrent loop.
* :mod:`~dualsparse.engine.runtime` -- :class:`SparseRuntime` (``step`` / ``run``).
* :mod:`~dualsparse.engine.lm` -- :class:`~dualsparse.engine.lm.SparseLM` (whole language
  models: segments, streaming, batches, generation).
* :mod:`~dualsparse.engine.numba_cache` -- one numba cache directory per version of the sources.
"""

from dualsparse.engine import numba_cache

# the kernel modules are decorated (and their cache directory chosen) inside this block
with numba_cache.engine_cache():
    from dualsparse.engine import gates, kernels  # noqa: F401

from dualsparse.engine.events import EventComparison, compare_events  # noqa: E402
from dualsparse.engine.formats import DenseMatrix, PackedMatrix  # noqa: E402
from dualsparse.engine.pack import PackedRNN, pack_dense, pack_matrix, pack_rnn  # noqa: E402
from dualsparse.engine.runtime import SparseRuntime  # noqa: E402

__all__ = ["DenseMatrix", "EventComparison", "PackedMatrix", "PackedRNN", "SparseRuntime",
           "compare_events", "pack_dense", "pack_matrix", "pack_rnn"]
