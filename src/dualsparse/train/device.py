"""``--device``: one check of the flag and one way to turn it into a ``torch.device``."""

from __future__ import annotations

import re

import torch


def check_device(device: str | None) -> None:
    """``--device``: None (the default), ``cpu``, ``cuda`` or ``cuda:N`` (format only)."""
    if device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", str(device)):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {device!r}")


def resolve_device(device: str | None) -> torch.device:
    """The ``torch.device`` of ``--device`` (None: ``cuda`` when CUDA is available, else
    ``cpu``), refused with the flag in the message when CUDA is missing or the GPU index is
    out of range."""
    check_device(device)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"--device {device}: there are {count} CUDA device(s) "
                             f"(cuda:0 to cuda:{count - 1})")
    return dev


__all__ = ["check_device", "resolve_device"]
