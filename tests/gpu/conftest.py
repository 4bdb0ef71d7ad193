"""CUDA tests, run by ``scripts/gpu-check.sh`` (and by ``pytest tests`` where CUDA exists);
skipped with a reason where CUDA is absent. Triton tests additionally need triton compiled
(not interpreted: run this directory in a process without ``TRITON_INTERPRET=1``)."""

from __future__ import annotations

import os

import pytest
import torch

CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _cuda_only():
    if not CUDA:
        pytest.skip("CUDA is not available (GPU tests run with scripts/gpu-check.sh)")
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    deterministic = torch.are_deterministic_algorithms_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cuda.matmul.allow_tf32 = False  # parity checks in IEEE fp32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture
def triton_compiled():
    """The Triton EGRU module, skipping when triton is missing or runs interpreted here."""
    from dualsparse.models import triton_egru

    if not triton_egru.available():
        pytest.skip("triton is not installed (pip install 'dualsparse[gpu]')")
    if triton_egru.interpreting():
        pytest.skip("triton runs interpreted in this process (TRITON_INTERPRET=1)")
    return triton_egru
