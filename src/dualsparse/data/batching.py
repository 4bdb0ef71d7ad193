"""Batching for language modelling: time-first batches and BPTT segments.

Conventions (pytorch/examples ``word_language_model``): a token stream of shape ``(N,)`` is cut
into ``B`` contiguous columns, giving ``(N // B, B)`` (time first); a BPTT segment starting at row
``i`` with length ``T`` is ``input = source[i:i+T]`` and ``target = source[i+1:i+1+T]``, both
``(T, B)``.

Two epoch iterators are provided, both resumable:

* :class:`FixedBPTT` -- segments of ``bptt`` rows (the last one may be shorter);
* :class:`RandomBPTT` -- AWD-LSTM style random lengths: with probability ``p`` the mean is
  ``bptt``, otherwise ``bptt / 2``; the length is drawn from a normal with that mean and
  standard deviation ``std``, rounded, and clipped to ``[min_len, max_len]``. Each segment
  carries ``lr_scale = T / bptt`` so a trainer can scale the learning rate per step.

Resuming mid-epoch: save ``it.state_dict()`` with the checkpoint (after the trainer has used the
segment it got), then rebuild the iterator with the same source and arguments and call
``it.load_state_dict(state)``; iteration continues with the next segment. The segment
boundaries of an epoch are fixed when the iterator is built, so the resumed epoch is identical.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from dualsparse.validation import check_int, check_real

__all__ = [
    "BPTTIterator",
    "FixedBPTT",
    "RandomBPTT",
    "Segment",
    "batchify",
    "get_batch",
]


def batchify(
    data: torch.Tensor, batch_size: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Cut a token stream ``(N,)`` into ``batch_size`` columns: ``(N // batch_size, batch_size)``.

    Column ``b`` holds tokens ``b * rows ... (b + 1) * rows - 1``; the last ``N % batch_size``
    tokens are dropped. Raises ``ValueError`` if ``data`` is not 1-D, ``batch_size < 1``, or
    the data has fewer than ``batch_size`` tokens.
    """
    if data.dim() != 1:
        raise ValueError(f"batchify expects a 1-D token tensor, got shape {tuple(data.shape)}")
    batch_size = check_int("batch_size", batch_size, low=1)
    rows = data.numel() // batch_size
    if rows == 0:
        raise ValueError(f"batch_size {batch_size} is larger than the data ({data.numel()} tokens)")
    out = data[: rows * batch_size].view(batch_size, rows).t().contiguous()
    return out if device is None else out.to(device)


def get_batch(source: torch.Tensor, i: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input and next-token target starting at row ``i``: two ``(T, B)`` tensors (views).

    ``T = min(seq_len, rows - 1 - i)``, so the final segment may be shorter than ``seq_len``.
    Raises ``ValueError`` unless ``0 <= i < rows - 1`` and ``seq_len >= 1``.
    """
    _check_source(source)
    rows = source.size(0)
    i = check_int(f"start row i (of {rows} rows)", i, low=0, high=rows - 2)
    seq_len = check_int("seq_len", seq_len, low=1)
    length = min(seq_len, rows - 1 - i)
    return source[i : i + length], source[i + 1 : i + 1 + length]


def _check_source(source: torch.Tensor) -> None:
    if source.dim() != 2:
        raise ValueError(f"source must be (rows, batch) from batchify, got {tuple(source.shape)}")
    if source.size(0) < 2:
        raise ValueError(
            f"source needs at least 2 rows for one input/target pair, got {source.size(0)}"
        )


@dataclass(frozen=True)
class Segment:
    """One BPTT segment: ``input``/``target`` ``(T, B)``, start row, index in epoch, LR scale."""

    input: torch.Tensor
    target: torch.Tensor
    start: int
    index: int
    lr_scale: float

    @property
    def seq_len(self) -> int:
        """Number of time steps ``T``."""
        return self.input.size(0)


class BPTTIterator:
    """Iterates over precomputed segment boundaries ``[(start_row, length), ...]`` of one epoch.

    ``index`` is the number of segments already yielded; ``position`` the start row of the next
    one (``rows - 1`` when the epoch is done). Iterating continues from ``index``.
    """

    kind = "base"

    def __init__(self, source: torch.Tensor, bptt: int, bounds: list[tuple[int, int]]) -> None:
        _check_source(source)
        self.source = source
        self.bptt = bptt
        self.bounds = bounds
        self.index = 0

    def __len__(self) -> int:
        return len(self.bounds)

    @property
    def remaining(self) -> int:
        """Segments not yet yielded in this epoch."""
        return len(self.bounds) - self.index

    @property
    def position(self) -> int:
        """Start row of the next segment in ``source`` (``rows - 1`` when exhausted)."""
        if self.index >= len(self.bounds):
            return self.source.size(0) - 1
        return self.bounds[self.index][0]

    def __iter__(self) -> Iterator[Segment]:
        return self

    def __next__(self) -> Segment:
        if self.index >= len(self.bounds):
            raise StopIteration
        start, length = self.bounds[self.index]
        inp, target = get_batch(self.source, start, length)
        segment = Segment(inp, target, start, self.index, length / self.bptt)
        self.index += 1
        return segment

    def seek(self, index: int) -> None:
        """Make segment number ``index`` (0-based) the next one; ``len(self)`` ends the epoch."""
        if not 0 <= index <= len(self.bounds):
            raise ValueError(f"segment index {index} out of range [0, {len(self.bounds)}]")
        self.index = index

    def _config(self) -> dict[str, Any]:
        return {"kind": self.kind, "rows": self.source.size(0), "bptt": self.bptt}

    def state_dict(self) -> dict[str, Any]:
        """Position and settings (plain Python values and tensors, ``torch.save``-able)."""
        return {**self._config(), "index": self.index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`; settings must match this iterator's."""
        self._check_config(state)
        self.seek(int(state["index"]))

    def _check_config(self, state: dict[str, Any]) -> None:
        for key, value in self._config().items():
            if state.get(key) != value:
                raise ValueError(
                    f"cannot resume: state has {key}={state.get(key)!r}, iterator has {value!r} "
                    "(rebuild the iterator with the same source and arguments)"
                )


def _check_bptt(bptt: int) -> None:
    check_int("bptt", bptt, low=1)


class FixedBPTT(BPTTIterator):
    """Segments of ``bptt`` rows starting at rows 0, bptt, 2*bptt, ...; ``lr_scale = T / bptt``.

    Args:
        source: ``(rows, B)`` from :func:`batchify`.
        bptt: segment length in time steps.
    """

    kind = "fixed"

    def __init__(self, source: torch.Tensor, bptt: int) -> None:
        _check_bptt(bptt)
        _check_source(source)
        last = source.size(0) - 1
        bounds = [(i, min(bptt, last - i)) for i in range(0, last, bptt)]
        super().__init__(source, bptt, bounds)


class RandomBPTT(BPTTIterator):
    """AWD-LSTM random-length BPTT segments (Merity et al., 2017), reproducible and resumable.

    Per segment: mean ``bptt`` with probability ``p``, else ``bptt / 2``; length
    ``round(Normal(mean, std))`` clipped to ``[min_len, max_len]``; the last segment is cut at
    the end of the data. ``lr_scale = T / bptt`` with ``T`` the actual segment length.

    Args:
        source: ``(rows, B)`` from :func:`batchify`.
        bptt: base segment length in time steps.
        p: probability of the full-length mean.
        std: standard deviation of the length, time steps.
        min_len: shortest length, time steps.
        max_len: longest length, time steps; default ``bptt + 20``.
        seed: an int seed or a ``torch.Generator`` (its state is advanced); ``None`` uses
            the global torch RNG to draw a seed.
    """

    kind = "random"

    def __init__(
        self,
        source: torch.Tensor,
        bptt: int,
        *,
        p: float = 0.95,
        std: float = 5.0,
        min_len: int = 5,
        max_len: int | None = None,
        seed: int | torch.Generator | None = None,
    ) -> None:
        _check_bptt(bptt)
        _check_source(source)
        max_len = bptt + 20 if max_len is None else max_len
        _check_random_args(p, std, min_len, max_len)
        self.bptt = bptt
        self.p, self.std, self.min_len, self.max_len = float(p), float(std), min_len, max_len
        generator = _as_generator(seed)
        self.rng_state = generator.get_state()
        super().__init__(source, bptt, self._sample_bounds(generator, source.size(0)))

    def _sample_length(self, generator: torch.Generator) -> int:
        full = torch.rand((), generator=generator).item() < self.p
        mean = self.bptt if full else self.bptt / 2
        draw = torch.normal(mean, self.std, (1,), generator=generator).item()
        return int(min(max(round(draw), self.min_len), self.max_len))

    def _sample_bounds(self, generator: torch.Generator, rows: int) -> list[tuple[int, int]]:
        bounds: list[tuple[int, int]] = []
        start, last = 0, rows - 1
        while start < last:
            length = min(self._sample_length(generator), last - start)
            bounds.append((start, length))
            start += length
        return bounds

    def _config(self) -> dict[str, Any]:
        extra = {"p": self.p, "std": self.std, "min_len": self.min_len, "max_len": self.max_len}
        return {**super()._config(), **extra}

    def state_dict(self) -> dict[str, Any]:
        """Position, settings and the RNG state the epoch's lengths were drawn from."""
        return {**super().state_dict(), "rng_state": self.rng_state.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: redraw the saved epoch's boundaries from ``rng_state``, then seek."""
        self._check_config(state)
        generator = torch.Generator()
        generator.set_state(state["rng_state"])
        self.rng_state = state["rng_state"].clone()
        self.bounds = self._sample_bounds(generator, self.source.size(0))
        self.seek(int(state["index"]))


def _check_random_args(p: float, std: float, min_len: int, max_len: int) -> None:
    check_real("p", p, low=0.0, high=1.0)
    check_real("std", std, low=0.0)
    check_int("min_len", min_len, low=1)
    check_int("max_len", max_len, low=min_len)


def _as_generator(seed: int | torch.Generator | None) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        if seed.device.type != "cpu":
            raise ValueError(f"seed generator must be a CPU generator, got device {seed.device}")
        return seed
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    return torch.Generator().manual_seed(check_int("seed", seed))
