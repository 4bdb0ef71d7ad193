"""dualsparse.engine: event-driven, weight-sparse CPU inference (numba kernels).

* :mod:`~dualsparse.engine.pack` -- trained weights -> column-compressed / tiled packs.
* :mod:`~dualsparse.engine.kernels` -- active-column accumulation and fused gate kernels.
* :mod:`~dualsparse.engine.runtime` -- :class:`SparseRuntime` (``step`` / ``run``).
"""

from dualsparse.engine.pack import PackedMatrix, PackedRNN, pack_matrix, pack_rnn
from dualsparse.engine.runtime import EventComparison, SparseRuntime, compare_events

__all__ = ["EventComparison", "PackedMatrix", "PackedRNN", "SparseRuntime", "compare_events",
           "pack_matrix", "pack_rnn"]
