"""Checks that stay out of compiled and exported graphs: inputs and parameters free of NaN/inf.

A check such as ``bool(torch.isfinite(x).all())`` reads a tensor's value in Python: in eager
mode it costs one reduction, but under ``torch.compile`` it breaks the graph (``fullgraph=True``
fails) and ``torch.export`` refuses it (a data-dependent branch). These checks run in eager
mode only and are skipped while ``torch.compile``/``torch.export`` (and so the ONNX exporter)
or the TorchScript tracer trace the module: a compiled or exported graph does not check its
inputs for NaN/inf. :func:`check_parameters_finite` gives the PyTorch forward the guarantee the
engine and checkpoint loading give: one reduction per parameter and one host sync, once per
forward.

Both first sum each tensor: a NaN or inf element makes the sum NaN or inf, and a sum is one
read of the tensor, where ``isfinite(x).all()`` writes and reads a mask (25-30x slower on a
CPU: 860 against 31 us for an LSTM layer's 4 parameters of 200 units). Only a non-finite sum
(a bad element, or a sum that overflowed) runs the element-wise test, which decides.
"""

from __future__ import annotations

import torch
from torch import nn


def is_tracing() -> bool:
    """True while torch.compile, torch.export or the TorchScript tracer traces the code."""
    return bool(torch.compiler.is_compiling() or torch.jit.is_tracing()
                or torch.onnx.is_in_onnx_export())


def all_finite(tensor: torch.Tensor) -> bool:
    """True if no element of ``tensor`` is NaN or inf (the sum first, see module docstring)."""
    with torch.no_grad():
        return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise ``ValueError("<what> contains NaN or inf")`` in eager mode; no-op while tracing."""
    if not is_tracing() and not all_finite(tensor):
        raise ValueError(f"{what} contains NaN or inf")


def check_parameters_finite(module: nn.Module, what: str) -> None:
    """``ValueError`` naming the first parameter of ``module`` holding NaN or inf."""
    if is_tracing():
        return
    params = [(n, p) for n, p in module.named_parameters() if p.is_floating_point()]
    if not params:
        return
    with torch.no_grad():
        if bool(torch.stack([torch.isfinite(p.sum()) for _, p in params]).all()):
            return
    bad = [n for n, p in params if not all_finite(p)]
    if not bad:  # only a sum overflowed
        return
    raise ValueError(f"{what}: parameter(s) {bad} contain NaN or inf (diverged training or a "
                     "damaged checkpoint)")


__all__ = ["all_finite", "check_finite", "check_parameters_finite", "is_tracing"]
