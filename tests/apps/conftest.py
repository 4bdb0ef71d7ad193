"""Shared settings for the app tests (LM and KWS): one torch thread (the CI machine is small and
shared, and tiny models only lose from intra-op threads); the trainer's global
determinism switch is restored after each test."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread_and_restore_determinism():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
