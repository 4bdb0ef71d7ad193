"""Keyword spotting on FSDD: GRU vs eGRU (float) vs eGRU (quantisation-aware, deployed).

:class:`~dualsparse.apps.kws.task.KWSTask` is the :class:`~dualsparse.train.task.Task` the
common :class:`~dualsparse.train.loop.Trainer` runs; :mod:`dualsparse.apps.kws.commands` is
``dualsparse train --task kws``.
"""

from dualsparse.apps.kws.task import KWSTask

__all__ = ["KWSTask"]
