"""One entry point for the C emitters: the deployed eGRU, the float GRU and the int8/Q15 GRU all
get the same C API (``p_classify``, ``p_state``, ``p_logit_t``, ...), so the host and Cortex-M0
harnesses can build any of them."""

from __future__ import annotations

import os
from pathlib import Path

from dualsparse.embedded.codegen import emit_c
from dualsparse.embedded.gru import FloatGRU, IntGRU
from dualsparse.embedded.gru_codegen import emit_gru_c
from dualsparse.embedded.reference import DeployedEGRU

#: the models the harnesses can build
CModel = DeployedEGRU | FloatGRU | IntGRU


def emit_model(model: CModel, out_dir: str | os.PathLike, prefix: str) -> list[Path]:
    """Emit the C of ``model`` under ``prefix`` into ``out_dir`` (see the two emitters)."""
    if isinstance(model, DeployedEGRU):
        return emit_c(model, out_dir, prefix)
    if isinstance(model, FloatGRU | IntGRU):
        return emit_gru_c(model, out_dir, prefix)
    raise ValueError(f"model must be a DeployedEGRU, FloatGRU or IntGRU, got "
                     f"{type(model).__name__}")


def model_sources(out_dir: str | os.PathLike, prefix: str) -> list[Path]:
    """The C files to compile for a model emitted under ``prefix``."""
    return [Path(out_dir) / f"{prefix}.c"]


def state_sizes(model: CModel) -> list[int]:
    return [L.hidden_size for L in model.layers]


__all__ = ["CModel", "emit_model", "model_sources", "state_sizes"]
