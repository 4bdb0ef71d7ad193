"""Recurrent layers: EGRU (event-based GRU) and GRU/LSTM baselines with one interface."""

from dualsparse.models.compiled import compile_steps
from dualsparse.models.egru import EGRU, EGRUCell, EGRUState, EGRUStepResult, egru_step
from dualsparse.models.recurrent import RecurrentBase
from dualsparse.models.rnn import GRU, LSTM, GRUCell, GRUState, LSTMCell, LSTMState
from dualsparse.models.states import LayerSequences, detach_state, stack_state
from dualsparse.models.surrogate import Surrogate, heaviside

__all__ = [
    "EGRU", "EGRUCell", "EGRUState", "EGRUStepResult", "egru_step",
    "GRU", "LSTM", "GRUCell", "LSTMCell", "GRUState", "LSTMState",
    "LayerSequences", "RecurrentBase", "detach_state", "stack_state",
    "Surrogate", "heaviside", "compile_steps",
]
