"""The Triton kernels on CPU through Triton's interpreter (no GPU needed; small sizes).

Triton fixes its mode (compiled or interpreted) per process, when triton is first imported:
``TRITON_INTERPRET=1`` must be set before, and stay set while kernels run (parts of triton
read it lazily). Without CUDA this conftest sets it, imports the kernel modules (so that they
start in interpreter mode) and restores the variable at once; each test of this directory then
sets it again for its own duration only, so the environment of other tests is unchanged (and
without CUDA no compiled Triton kernel could run in this process anyway). With CUDA these
tests are skipped: ``tests/gpu`` runs the same kernels compiled.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch


def _prepare_interpreter() -> str | None:
    """None when the kernels run in the interpreter here, else why these tests are skipped."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'dualsparse[gpu]')"
    if torch.cuda.is_available():
        return "CUDA present: the kernels are tested compiled in tests/gpu"
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        # triton (optional, heavy) is imported here so that it starts in interpreter mode;
        # interpreting() imports the EGRU kernel module
        import dualsparse.engine.triton_events  # noqa: F401
        from dualsparse.models import triton_egru
        interpreted = triton_egru.interpreting()
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
    if not interpreted:
        return "triton was imported in compiled mode before this conftest ran"
    return None


SKIP_REASON = _prepare_interpreter()


@pytest.fixture(autouse=True)
def _interpreter_only(monkeypatch):
    if SKIP_REASON is not None:
        pytest.skip(SKIP_REASON)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
