"""Histograms of a model's recurrent weights and biases, per layer (the papers' weight and
bias distribution figures: Mukherji et al. 000 Fig. 2C/D, 001 Fig. 5).

Fixed bin edges, so that runs can be pooled over seeds and compared across settings: weights
in ``[-1.5, 1.5]`` (bins of 0.025), biases in ``[-1, 1]`` (bins of 0.025); values outside the
range are counted in the outermost bins. Pruned (exactly zero) weights are left out of the
weight histogram and counted in ``zeros`` instead, so a pruned layer's histogram shows the
surviving weights.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

WEIGHT_RANGE = (-1.5, 1.5)
BIAS_RANGE = (-1.0, 1.0)
BIN_WIDTH = 0.025
#: ``<prefix>weight_ih_l<k>`` / ``bias_hh_l<k>`` etc.: the names of torch.nn.RNN-style layers
_NAME = re.compile(r"^(?P<prefix>.*?)(?P<kind>weight|bias)_(?:ih|hh)_l(?P<index>\d+)$")


def _histogram(values: torch.Tensor, lo: float, hi: float) -> dict[str, list[float]]:
    bins = round((hi - lo) / BIN_WIDTH)
    values = values.detach().reshape(-1).to(torch.float64)
    counts = torch.histc(values.clamp(lo, hi), bins=bins, min=lo, max=hi)
    return {"counts": counts.tolist(), "edges": torch.linspace(lo, hi, bins + 1).tolist()}


def parameter_histograms(model: nn.Module) -> list[dict[str, Any]]:
    """Weight and bias histograms of every recurrent layer of ``model``.

    A layer is the set of parameters named ``weight_ih_l<k>``, ``weight_hh_l<k>``,
    ``bias_ih_l<k>``, ``bias_hh_l<k>`` under one module prefix (``torch.nn.GRU``/``LSTM``
    naming, which the EGRU and the LM's ``rnns`` follow), in the order the module lists them.

    Returns:
        One dict per layer: ``layer`` (0-based), ``weights`` and ``biases`` (``{"counts",
        "edges"}``; ``biases`` None for a layer without biases), ``zeros`` (pruned weights,
        not in ``weights``) and ``weight_count`` (all weights).

    Raises:
        ValueError: if ``model`` has no parameter with such a name.
    """
    layers: dict[tuple[str, int], dict[str, list[torch.Tensor]]] = {}
    for name, param in model.named_parameters():
        match = _NAME.match(name)
        if match is None:
            continue
        key = (match["prefix"], int(match["index"]))
        layers.setdefault(key, {"weight": [], "bias": []})[match["kind"]].append(param)
    if not layers:
        raise ValueError("the model has no recurrent weights named weight_ih_l<k> / "
                         "weight_hh_l<k>")
    out = []
    for k, parts in enumerate(layers.values()):
        weights = torch.cat([p.detach().reshape(-1) for p in parts["weight"]])
        nonzero = weights[weights != 0]
        biases = (torch.cat([p.detach().reshape(-1) for p in parts["bias"]])
                  if parts["bias"] else None)
        out.append({
            "layer": k,
            "weights": _histogram(nonzero, *WEIGHT_RANGE),
            "biases": None if biases is None else _histogram(biases, *BIAS_RANGE),
            "zeros": int(weights.numel() - nonzero.numel()),
            "weight_count": int(weights.numel()),
        })
    return out


__all__ = ["BIAS_RANGE", "BIN_WIDTH", "WEIGHT_RANGE", "parameter_histograms"]
