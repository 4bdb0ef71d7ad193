"""NaN/inf check of a module's parameters, once per forward and outside compiled regions.

The engine and checkpoint loading refuse non-finite weights; :func:`check_parameters_finite`
gives the PyTorch forward the same guarantee. It is one fused reduction over all parameters
(one host sync) and is skipped while ``torch.compile``/``torch.export`` trace the module or
``torch.jit`` traces it, so that compiled graphs have no data-dependent branch.
"""

from __future__ import annotations

import torch
from torch import nn


def _tracing() -> bool:
    return bool(torch.compiler.is_compiling() or torch.jit.is_tracing()
                or torch.onnx.is_in_onnx_export())


def check_parameters_finite(module: nn.Module, what: str) -> None:
    """``ValueError`` naming the first parameter of ``module`` holding NaN or inf."""
    if _tracing():
        return
    params = [(n, p) for n, p in module.named_parameters() if p.is_floating_point()]
    if not params:
        return
    with torch.no_grad():
        flags = torch.stack([torch.isfinite(p).all() for _, p in params])
        if bool(flags.all()):
            return
    bad = [n for (n, _), ok in zip(params, flags.tolist(), strict=True) if not ok]
    raise ValueError(f"{what}: parameter(s) {bad} contain NaN or inf (diverged training or a "
                     "damaged checkpoint)")


__all__ = ["check_parameters_finite"]
