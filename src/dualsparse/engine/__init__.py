"""dualsparse.engine: event-driven, weight-sparse CPU inference (numba kernels).

* :mod:`~dualsparse.engine.formats` -- packed formats (tiles/CSC, dense column-major), each
  with ``accumulate`` and ``check``.
* :mod:`~dualsparse.engine.pack` -- trained recurrent stacks -> packed layers.
* :mod:`~dualsparse.engine.kernels`, :mod:`~dualsparse.engine.gates` -- the multi-vector
  event-accumulate kernels, the fused gate kernels and the recurrent loop.
* :mod:`~dualsparse.engine.runtime` -- :class:`SparseRuntime` (``step`` / ``run``).
* :mod:`~dualsparse.engine.lm` -- :class:`~dualsparse.engine.lm.SparseLM` (whole language
  models: segments, streaming, batches, generation).
"""

from dualsparse.engine.events import EventComparison, compare_events
from dualsparse.engine.formats import DenseMatrix, PackedMatrix
from dualsparse.engine.pack import PackedRNN, pack_dense, pack_matrix, pack_rnn
from dualsparse.engine.runtime import SparseRuntime

__all__ = ["DenseMatrix", "EventComparison", "PackedMatrix", "PackedRNN", "SparseRuntime",
           "compare_events", "pack_dense", "pack_matrix", "pack_rnn"]
