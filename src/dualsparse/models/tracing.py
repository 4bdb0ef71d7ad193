"""Checks that stay out of compiled and exported graphs.

A check such as ``bool(torch.isfinite(x).all())`` reads a tensor's value in Python: in eager
mode it costs one reduction, but under ``torch.compile`` it breaks the graph (``fullgraph=True``
fails) and ``torch.export`` refuses it (a data-dependent branch). These checks run in eager
mode only and are skipped while ``torch.compile``/``torch.export`` (and so the ONNX exporter)
or the TorchScript tracer trace the module: a compiled or exported graph does not check its
inputs for NaN/inf.
"""

from __future__ import annotations

import torch


def is_tracing() -> bool:
    """True while torch.compile, torch.export or the TorchScript tracer traces the code."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise ``ValueError("<what> contains NaN or inf")`` in eager mode; no-op while tracing."""
    if not is_tracing() and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{what} contains NaN or inf")


__all__ = ["check_finite", "is_tracing"]
