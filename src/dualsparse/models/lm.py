"""Word-level recurrent language model over EGRU, LSTM or GRU layers (AWD-LSTM style).

Structure (time-first, ``T`` steps, ``B`` sequences, vocabulary ``V``, embedding ``E``)::

    tokens (T, B) -> embedding (embedding dropout ``dropoute``: whole words)
                  -> locked dropout ``dropouti``                      (T, B, E)
                  -> layer 0 -> locked dropout ``dropouth`` -> layer 1 -> ... -> layer L-1
                  -> locked dropout ``dropout``                       (T, B, H_last)
                  -> decoder (tied to the embedding when H_last == E)  (T, B, V) logits

Each layer is its own single-layer :class:`~dualsparse.models.EGRU` / ``LSTM`` / ``GRU``
module (``self.rnns[k]``), so locked dropout between layers is applied outside the modules
and every layer's input sequence and :class:`~dualsparse.models.LayerSequences` are available
to the accounting module (``ActivityMeter.update_layer``). DropConnect (``wdrop``) acts on
each layer's recurrent weights ``weight_hh`` (one mask per forward call).

Parameter names: ``embedding.weight``, ``rnns.{k}.weight_ih_l0`` / ``weight_hh_l0`` /
``bias_ih_l0`` / ``bias_hh_l0`` / ``threshold_raw_l0`` (EGRU), ``decoder.weight`` (absent
from ``parameters()`` when tied, since it *is* ``embedding.weight``), ``decoder.bias``
(zero-initialised).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from dualsparse.models.egru import EGRU
from dualsparse.models.recurrent import RecurrentBase
from dualsparse.models.regularizers import check_probability, embedding_dropout, locked_dropout
from dualsparse.models.rnn import GRU, LSTM
from dualsparse.models.states import LayerSequences, detach_state
from dualsparse.models.tracing import is_tracing
from dualsparse.validation import check_choice, check_int, check_real

CELLS: dict[str, type[RecurrentBase]] = {"egru": EGRU, "lstm": LSTM, "gru": GRU}
#: EGRU constructor options that the language model passes through.
EGRU_OPTIONS = ("surrogate", "surrogate_gamma", "surrogate_width", "reset_mode",
                "threshold_init", "threshold_mean", "threshold_range", "threshold_learnable",
                "threshold_parameterisation", "events", "backend")


class LMSequences(NamedTuple):
    """What a forward pass with ``return_sequences=True`` records, all time-first.

    Attributes:
        layer_inputs: per layer, the input it saw ``(T, B, I_k)`` (after dropout).
        layers: per layer, its :class:`LayerSequences` (outputs before dropout, events...).
        decoder_input: ``(T, B, E)`` what the decoder saw (after output dropout).
    """

    layer_inputs: tuple[torch.Tensor, ...]
    layers: tuple[LayerSequences, ...]
    decoder_input: torch.Tensor


class RNNLanguageModel(nn.Module):
    """Embedding, stacked recurrent layers with per-layer sizes, (tied) linear decoder.

    Args:
        vocab_size: number of word types ``V``.
        emb_size: embedding size ``E``.
        hidden_sizes: units per layer, e.g. ``(1350, 1350, 750)``.
        cell: ``"egru"``, ``"lstm"`` or ``"gru"``.
        tie_weights: ``"auto"`` ties the decoder to the embedding when ``hidden_sizes[-1] ==
            emb_size``; ``True`` requires it (``ValueError`` otherwise); ``False`` never ties.
        dropout: locked dropout on the last layer's output (awd ``--dropout``).
        dropouth: locked dropout between layers (awd ``--dropouth``; EvNN dropout_forward).
        dropouti: locked dropout on the embedded input (awd ``--dropouti``; EvNN dropout_emb).
        dropoute: embedding dropout, probability of dropping a word type (awd ``--dropoute``).
        wdrop: DropConnect probability on recurrent weights ``weight_hh`` (awd ``--wdrop``).
        cell_options: extra keyword arguments of the cell (EGRU: surrogate, thresholds, ...).
        init_range: if given, every recurrent weight and bias is drawn from
            ``U(-init_range, init_range)`` (Zaremba et al. 2014 use 0.1); None keeps the
            layers' own ``nn.GRU``-style init. Thresholds keep their own initialisation.
    """

    def __init__(
        self,
        vocab_size: int,
        emb_size: int,
        hidden_sizes: Sequence[int] | int,
        cell: str = "egru",
        tie_weights: bool | str = "auto",
        dropout: float = 0.0,
        dropouth: float = 0.0,
        dropouti: float = 0.0,
        dropoute: float = 0.0,
        wdrop: float = 0.0,
        cell_options: dict[str, Any] | None = None,
        init_range: float | None = None,
    ) -> None:
        super().__init__()
        vocab_size = check_int("vocab_size", vocab_size, low=1)
        emb_size = check_int("emb_size", emb_size, low=1)
        if isinstance(hidden_sizes, int):  # one layer
            hidden_sizes = (hidden_sizes,)
        if isinstance(hidden_sizes, str) or not isinstance(hidden_sizes, Sequence) \
                or not hidden_sizes:
            raise ValueError(f"hidden_sizes must be one or more ints >= 1, got {hidden_sizes!r}")
        sizes = tuple(check_int("hidden_sizes", h, low=1) for h in hidden_sizes)
        cell = cell.lower()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; expected one of {sorted(CELLS)}")
        options = dict(cell_options or {})
        if cell != "egru" and options:
            raise ValueError(f"cell_options {sorted(options)} only apply to the egru cell")
        unknown = set(options) - set(EGRU_OPTIONS)
        if unknown:
            raise ValueError(f"unknown cell_options {sorted(unknown)}; allowed: {EGRU_OPTIONS}")
        check_choice("tie_weights", tie_weights, (True, False, "auto"))
        if tie_weights is True and sizes[-1] != emb_size:
            raise ValueError(f"cannot tie weights: last hidden size {sizes[-1]} != emb_size "
                             f"{emb_size}")
        self.vocab_size, self.emb_size, self.hidden_sizes = vocab_size, emb_size, sizes
        self.cell = cell
        self.cell_options = options
        self.dropout = check_probability("dropout", dropout)
        self.dropouth = check_probability("dropouth", dropouth)
        self.dropouti = check_probability("dropouti", dropouti)
        self.dropoute = check_probability("dropoute", dropoute)
        self.wdrop = check_probability("wdrop", wdrop)
        self.init_range = None if init_range is None else check_real(
            "init_range", init_range, low=0.0, low_open=True)
        self.tied = tie_weights is True or (tie_weights == "auto" and sizes[-1] == emb_size)
        self._tie_setting = tie_weights

        self.embedding = nn.Embedding(vocab_size, emb_size)
        in_sizes = (emb_size,) + sizes[:-1]
        self.rnns = nn.ModuleList(
            CELLS[cell](i, h, dropconnect=self.wdrop, **options)
            for i, h in zip(in_sizes, sizes, strict=True)
        )
        self.decoder = nn.Linear(sizes[-1], vocab_size)
        self.reset_parameters()
        if self.tied:
            self.decoder.weight = self.embedding.weight

    def reset_parameters(self) -> None:
        """Embedding ``U(-0.1, 0.1)`` (as awd-lstm), decoder bias 0, layers as nn.GRU (or
        ``U(-init_range, init_range)`` for every recurrent weight and bias)."""
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        if self.init_range is not None:
            for rnn in self.rnns:
                for name, p in rnn.named_parameters():
                    if name.startswith(("weight_", "bias_")):
                        nn.init.uniform_(p, -self.init_range, self.init_range)
        nn.init.zeros_(self.decoder.bias)
        if not self.tied:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    @property
    def num_layers(self) -> int:
        return len(self.rnns)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-serialisable dict (``from_config`` inverts it)."""
        options = {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in self.cell_options.items()}
        return {
            "vocab_size": self.vocab_size, "emb_size": self.emb_size,
            "hidden_sizes": list(self.hidden_sizes), "cell": self.cell,
            "tie_weights": self._tie_setting, "dropout": self.dropout,
            "dropouth": self.dropouth, "dropouti": self.dropouti, "dropoute": self.dropoute,
            "wdrop": self.wdrop, "cell_options": options, "init_range": self.init_range,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RNNLanguageModel:
        """Build a model from :meth:`get_config` output (``ValueError`` on unknown keys)."""
        allowed = {"vocab_size", "emb_size", "hidden_sizes", "cell", "tie_weights", "dropout",
                   "dropouth", "dropouti", "dropoute", "wdrop", "cell_options", "init_range"}
        unknown = set(config) - allowed
        if unknown:
            raise ValueError(f"unknown RNNLanguageModel config keys {sorted(unknown)}")
        return cls(**config)

    def extra_repr(self) -> str:
        drops = ", ".join(f"{n}={getattr(self, n)}" for n in
                          ("dropout", "dropouth", "dropouti", "dropoute", "wdrop")
                          if getattr(self, n))
        return f"cell={self.cell!r}, tied={self.tied}" + (f", {drops}" if drops else "")

    # ------------------------------------------------------------------ state
    def init_state(self, batch_size: int) -> tuple:
        """All-zero state: one per-layer state (e.g. ``EGRUState(y, c)``) per layer."""
        return tuple(rnn.init_state(batch_size)[0] for rnn in self.rnns)

    @staticmethod
    def detach_state(state: tuple) -> tuple:
        """Detached copy of a state (truncated BPTT between segments)."""
        return detach_state(state)

    # ---------------------------------------------------------------- forward
    def forward(self, tokens: torch.Tensor, state: tuple | None = None,
                return_sequences: bool = False):
        """Run the model over a segment of tokens.

        Args:
            tokens: ``(T, B)`` integer token ids in ``[0, V)``.
            state: per-layer states from a previous call (``init_state``), or None for zeros.
            return_sequences: also return :class:`LMSequences`.

        Returns:
            ``(logits (T, B, V), state)`` or ``(logits, state, LMSequences)``.
        """
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens)
            raise ValueError(f"tokens must be a (T, B) tensor, got {shape}")
        if tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be int64/int32 ids, got {tokens.dtype}")
        if tokens.numel() and not is_tracing() and (int(tokens.min()) < 0
                                                    or int(tokens.max()) >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got range "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        if state is None:
            state = tuple(None for _ in self.rnns)
        elif not isinstance(state, (list, tuple)) or len(state) != self.num_layers:
            raise ValueError(f"state must hold one entry per layer ({self.num_layers})")
        x = embedding_dropout(self.embedding, tokens, self.dropoute, self.training)
        x = locked_dropout(x, self.dropouti, self.training)
        new_state, inputs, seqs = [], [], []
        for k, rnn in enumerate(self.rnns):
            inputs.append(x)
            layer_state = None if state[k] is None else (state[k],)
            out, st, seq = rnn(x, layer_state, return_sequences=True)
            new_state.append(st[0])
            seqs.append(seq[0])
            last = k == self.num_layers - 1
            x = locked_dropout(out, self.dropout if last else self.dropouth, self.training)
        logits = self.decoder(x)
        if return_sequences:
            return logits, tuple(new_state), LMSequences(tuple(inputs), tuple(seqs), x)
        return logits, tuple(new_state)


def count_parameters(model: nn.Module, exclude_embedding: bool = False) -> int:
    """Number of distinct trainable parameters (a tied weight counts once)."""
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        if exclude_embedding and name.startswith(("embedding.", "decoder.")):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


__all__ = ["CELLS", "LMSequences", "RNNLanguageModel", "count_parameters"]
