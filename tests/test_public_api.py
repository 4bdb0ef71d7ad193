"""The top-level package exports the public API (``__all__``), each name loaded on first use."""

import subprocess
import sys

import pytest

import dualsparse
from dualsparse.accounting import measure
from dualsparse.engine.lm import SparseLM
from dualsparse.engine.runtime import SparseRuntime
from dualsparse.models import EGRU, GRU, LSTM, EGRUCell, EGRUState, GRUCell, LSTMCell
from dualsparse.models.lm import RNNLanguageModel
from dualsparse.sparsity import Pruner, PruningSpec


def test_public_names_are_the_library_objects():
    assert dualsparse.EGRU is EGRU and dualsparse.GRU is GRU and dualsparse.LSTM is LSTM
    assert (dualsparse.EGRUCell, dualsparse.GRUCell, dualsparse.LSTMCell) == (
        EGRUCell, GRUCell, LSTMCell)
    assert dualsparse.EGRUState is EGRUState
    assert dualsparse.RNNLanguageModel is RNNLanguageModel and dualsparse.measure is measure
    assert dualsparse.Pruner is Pruner and dualsparse.PruningSpec is PruningSpec
    assert dualsparse.SparseRuntime is SparseRuntime and dualsparse.SparseLM is SparseLM


def test_every_name_in_all_resolves():
    for name in dualsparse.__all__:
        assert getattr(dualsparse, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        dualsparse.Nope  # noqa: B018


def test_star_import_gives_the_api():
    namespace: dict = {}
    exec("from dualsparse import *", namespace)
    assert set(dualsparse.__all__) <= set(namespace)


def test_names_load_on_first_access():
    code = ("import sys, dualsparse; assert 'torch' not in sys.modules, 'torch loaded'; "
            "dualsparse.EGRU; assert 'torch' in sys.modules; "
            "assert 'numba' not in sys.modules, 'numba loaded'; "
            "dualsparse.SparseRuntime; assert 'numba' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
