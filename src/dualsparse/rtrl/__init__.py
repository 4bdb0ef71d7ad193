"""Exact real-time recurrent learning (RTRL) for the EGRU and GRU cells.

:class:`DenseRTRL` is the reference (full ``J_t`` and influence matrix); :class:`SparseRTRL`
gives the same gradients while skipping inactive units' Jacobian columns, pruned parameters'
influence columns and zero rows of ``M``; both count their work in a :class:`RTRLCounter`.
:class:`OnlineLearner` trains a cell and a linear readout online with either engine.
"""

from dualsparse.rtrl.base import RTRLBase
from dualsparse.rtrl.bptt import bptt_gradients, run_cell
from dualsparse.rtrl.cell import CellSpec, cell_spec
from dualsparse.rtrl.counters import RTRLCounter, StepRecord
from dualsparse.rtrl.dense import DenseRTRL
from dualsparse.rtrl.layout import ParamLayout, build_layout
from dualsparse.rtrl.sparse import SparseRTRL

__all__ = [
    "CellSpec", "DenseRTRL", "ParamLayout", "RTRLBase", "RTRLCounter", "SparseRTRL",
    "StepRecord", "bptt_gradients", "build_layout", "cell_spec", "run_cell",
]
