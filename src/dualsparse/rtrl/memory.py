"""Memory of the influence matrix: estimated before anything is allocated, refused if too big.

Exact RTRL stores ``H p`` numbers per sample (``p ~ 3 H^2``), so a cell of a few hundred units
can ask for tens of GB. :func:`check_fits` compares an engine's estimate with a limit and
raises a :class:`ValueError` that gives the number, the limit and what to change.
The default limit is :data:`DEFAULT_MEMORY_FRACTION` of the device's total memory (CPU:
physical RAM, CUDA: the GPU's memory).
"""

from __future__ import annotations

import os

import torch

#: fraction of the device's total memory an engine may use for its influence storage
DEFAULT_MEMORY_FRACTION = 0.5


def total_memory(device: torch.device) -> int:
    """Total memory of ``device`` in bytes (CPU: physical RAM; CUDA: the GPU's memory)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))


def default_max_bytes(device: torch.device) -> int:
    """:data:`DEFAULT_MEMORY_FRACTION` of :func:`total_memory`."""
    return int(DEFAULT_MEMORY_FRACTION * total_memory(device))


def format_bytes(n: float) -> str:
    """``n`` bytes as a short human-readable string (``"21.2 GB"``, decimal units)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def check_fits(engine: str, batch_size: int, per_sample: int, fixed: int, max_bytes: int,
               detail: str) -> None:
    """Raise :class:`ValueError` if ``fixed + batch_size * per_sample`` bytes exceed ``max_bytes``.

    Args:
        engine: class name for the message; detail: what the per-sample bytes are made of.
        per_sample: bytes that scale with the batch; fixed: bytes that do not.
    """
    need = fixed + batch_size * per_sample
    if need <= max_bytes:
        return
    fit = (max_bytes - fixed) // per_sample if per_sample else 0
    hint = (f"batch_size <= {fit} fits" if fit >= 1
            else "not even batch_size=1 fits")
    raise ValueError(
        f"{engine}.reset(batch_size={batch_size}) needs {format_bytes(need)} for the influence "
        f"matrix ({detail}), more than max_bytes={format_bytes(max_bytes)}; {hint}. Use a "
        f"smaller batch_size or hidden_size, float32 instead of float64, SparseRTRL with "
        f"(more) pruning (it stores only kept columns), or pass a larger max_bytes")


__all__ = ["DEFAULT_MEMORY_FRACTION", "check_fits", "default_max_bytes", "format_bytes",
           "total_memory"]
