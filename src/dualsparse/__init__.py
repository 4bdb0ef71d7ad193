"""dualsparse: recurrent networks sparse in activity and in weights.

Public API (the layers behind it are described in ``docs/architecture.md``)::

    EGRU, GRU, LSTM (+ EGRUCell, GRUCell, LSTMCell, EGRUState, GRUState, LSTMState)
    RNNLanguageModel                      # models
    measure                               # accounting: activity and MAC counts
    Pruner, PruningSpec                   # sparsity
    SparseRuntime, SparseLM               # engine (numba kernels)

The names are imported on first access (PEP 562), so that ``import dualsparse.<module>`` of a
light module (the sweep store, the validation helpers) does not load torch or numba.
"""

from typing import TYPE_CHECKING, Any

from dualsparse.version import __version__

if TYPE_CHECKING:
    from dualsparse.accounting import measure
    from dualsparse.engine.lm import SparseLM
    from dualsparse.engine.runtime import SparseRuntime
    from dualsparse.models import (
        EGRU,
        GRU,
        LSTM,
        EGRUCell,
        EGRUState,
        GRUCell,
        GRUState,
        LSTMCell,
        LSTMState,
    )
    from dualsparse.models.lm import RNNLanguageModel
    from dualsparse.sparsity import Pruner, PruningSpec

_MODELS = ("EGRU", "GRU", "LSTM", "EGRUCell", "GRUCell", "LSTMCell", "EGRUState", "GRUState",
           "LSTMState")


def __getattr__(name: str) -> Any:
    """Import a public name on first access; later accesses find it in the module dict."""
    if name in _MODELS:
        import dualsparse.models as module  # lazy export: torch only when a name is used
    elif name == "RNNLanguageModel":
        import dualsparse.models.lm as module  # lazy export: torch only when used
    elif name == "measure":
        import dualsparse.accounting as module  # lazy export: torch only when used
    elif name in ("Pruner", "PruningSpec"):
        import dualsparse.sparsity as module  # lazy export: torch only when used
    elif name == "SparseRuntime":
        import dualsparse.engine.runtime as module  # lazy export: numba adds about a second
    elif name == "SparseLM":
        import dualsparse.engine.lm as module  # lazy export: numba adds about a second
    else:
        raise AttributeError(f"module 'dualsparse' has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value
    return value


__all__ = [
    "EGRU", "GRU", "LSTM", "EGRUCell", "GRUCell", "LSTMCell", "EGRUState", "GRUState",
    "LSTMState", "RNNLanguageModel", "measure", "Pruner", "PruningSpec", "SparseRuntime",
    "SparseLM", "__version__",
]
