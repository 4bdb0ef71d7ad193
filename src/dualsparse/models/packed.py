"""``PackedSequence`` input for the recurrent stacks, as ``torch.nn.GRU`` accepts it.

Sequences of different lengths in one batch: the output is a ``PackedSequence`` with the
input's ``batch_sizes`` and ``sorted_indices``, the final state of each sequence is its state
after its own last step (the state of a finished sequence is frozen), in the batch's original
order, as ``nn.GRU``/``nn.LSTM`` return ``h_n``.

How: the sequences are sorted by length (the packing order), and the time axis is cut into
segments over which the set of running sequences does not change (one per distinct length);
each layer runs its usual time loop (the fused EGRU loop included) over each segment for the
sequences still running. Padding is never computed, and DropConnect draws one mask per
forward call as for padded input. With ``return_sequences=True`` the outputs, events and
internal states are ``PackedSequence``\\ s as well; :func:`split_sequences` cuts them into one
unpadded sequence each (what the accounting counts: padding is not a token).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from dualsparse.models.regularizers import dropconnect
from dualsparse.models.states import LayerSequences
from dualsparse.models.tracing import check_finite


def _segments(batch_sizes: torch.Tensor) -> list[tuple[int, int, int]]:
    """``(t0, t1, n)``: steps ``t0 .. t1-1`` run the first ``n`` sequences (packing order)."""
    sizes = batch_sizes.tolist()
    out, t0 = [], 0
    for t in range(1, len(sizes) + 1):
        if t == len(sizes) or sizes[t] != sizes[t0]:
            out.append((t0, t, sizes[t0]))
            t0 = t
    return out


def _pack_like(padded: torch.Tensor, like: PackedSequence) -> PackedSequence:
    """Pack a ``(T, B, F)`` tensor in packing order with ``like``'s batch sizes and order."""
    data = torch.cat([padded[t, :n] for t, n in enumerate(like.batch_sizes.tolist())])
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


def _fill(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``(S, n, F)`` -> ``(S, rows, F)`` with zero rows appended (finished sequences)."""
    if t.size(1) == rows:
        return t
    return torch.cat([t, t.new_zeros(t.size(0), rows - t.size(1), t.size(2))], 1)


def forward_packed(module: Any, packed: PackedSequence, state: Any = None,
                   return_sequences: bool = False) -> tuple:
    """``module.forward`` for a ``PackedSequence`` (see the module docstring).

    ``module`` is a :class:`~dualsparse.models.recurrent.RecurrentBase`; ``state`` its usual
    state for ``B`` sequences in the batch's original order (zeros if None).
    """
    data = packed.data
    if data.dim() != 2 or data.size(-1) != module.input_size:
        raise ValueError(f"input: packed data must be (N, {module.input_size}), got "
                         f"{tuple(data.shape)}")
    w = module.weight_ih_l0
    if data.dtype != w.dtype or data.device != w.device:
        raise ValueError(f"input: packed data is {data.dtype} on {data.device}, parameters are "
                         f"{w.dtype} on {w.device}")
    if module.check_finite:
        check_finite(data, "input")
    padded, _ = pad_packed_sequence(packed)  # (T, B, I), original batch order
    batch = padded.size(1)
    order = packed.sorted_indices
    if order is None:
        order = torch.arange(batch, device=data.device)
    x = padded.index_select(1, order)  # packing order: longest first
    segments = _segments(packed.batch_sizes)
    state_in = module._normalise_state(state, batch, x)
    new_state, sequences = [], []
    for k in range(module.num_layers):
        st = type(state_in[k])(*(t.index_select(0, order) for t in state_in[k]))
        initial = state_in[k][0]
        w_ih, w_hh, b_ih, b_hh = module.layer_weights(k)
        gi = F.linear(x, w_ih, b_ih)
        w_hh = dropconnect(w_hh, module.dropconnect, module.training)
        outs, recs = [], []
        for t0, t1, n in segments:
            head = type(st)(*(t[:n] for t in st))
            out, head, seq = module._run_layer(k, gi[t0:t1, :n], w_hh, b_hh, head,
                                               return_sequences)
            st = type(st)(*(torch.cat([a, b[n:]]) for a, b in zip(head, st, strict=True)))
            outs.append(_fill(out, batch))
            recs.append(seq)
        x = torch.cat(outs)
        new_state.append(st)
        if return_sequences:
            fields = [torch.cat([_fill(getattr(s, f), batch) for s in recs])
                      if getattr(recs[0], f) is not None else None
                      for f in ("events", "internal")]
            sequences.append(LayerSequences(_pack_like(x, packed), initial,
                                            *(None if f is None else _pack_like(f, packed)
                                              for f in fields)))
        if module.dropout and k < module.num_layers - 1:
            x = F.dropout(x, module.dropout, module.training)
    back = packed.unsorted_indices
    if back is not None:
        new_state = [type(s)(*(t.index_select(0, back) for t in s)) for s in new_state]
    output = _pack_like(x, packed)
    if return_sequences:
        return output, tuple(new_state), tuple(sequences)
    return output, tuple(new_state)


def split_sequences(inputs: PackedSequence, sequences: tuple[LayerSequences, ...],
                    batch_first: bool = False
                    ) -> list[tuple[torch.Tensor, tuple[LayerSequences, ...]]]:
    """One ``(input, per-layer sequences)`` pair per sequence, unpadded, batch of 1.

    Tensors are ``(L_b, 1, F)`` (``(1, L_b, F)`` with ``batch_first``); the batch's original
    order. For counting: padding steps are not tokens.
    """
    x, lengths = pad_packed_sequence(inputs)
    padded = [tuple(None if t is None else pad_packed_sequence(t)[0]
                    for t in (s.output, s.events, s.internal)) for s in sequences]
    out = []
    for b, n in enumerate(lengths.tolist()):
        def cut(t: torch.Tensor, b: int = b, n: int = n) -> torch.Tensor:
            piece = t[:n, b:b + 1]
            return piece.transpose(0, 1) if batch_first else piece

        seqs = tuple(LayerSequences(cut(o), s.initial_output[b:b + 1],
                                    None if e is None else cut(e),
                                    None if i is None else cut(i))
                     for s, (o, e, i) in zip(sequences, padded, strict=True))
        out.append((cut(x), seqs))
    return out


__all__ = ["PackedSequence", "forward_packed", "split_sequences"]
