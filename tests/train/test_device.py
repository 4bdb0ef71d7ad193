"""``--device`` resolution shared by ``train`` (through ``init_distributed``) and ``eval``:
the same refusals, with the flag and the value in the message, whichever command asks."""

import pytest
import torch

from dualsparse.train.device import resolve_device
from dualsparse.train.distributed import init_distributed


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize(("device", "expected"), [
    (None, torch.device("cuda")), ("cuda", torch.device("cuda")),
    ("cuda:1", torch.device("cuda", 1)), ("cpu", torch.device("cpu"))])
def test_the_named_device_with_two_gpus(two_gpus, device, expected):
    assert resolve_device(device) == expected


def test_without_cuda_the_default_is_the_cpu(no_gpu):
    assert resolve_device(None) == torch.device("cpu")


@pytest.mark.parametrize(("device", "message"), [
    ("cuda:2", "--device cuda:2: there are 2 CUDA device(s) (cuda:0 to cuda:1)"),
    ("gpu", "--device must be cpu, cuda or cuda:N, got 'gpu'"),
    ("cuda:-1", "--device must be cpu, cuda or cuda:N, got 'cuda:-1'")])
def test_bad_devices_are_refused_by_train_and_eval_alike(two_gpus, device, message):
    for resolve in (resolve_device, init_distributed):
        with pytest.raises(ValueError) as err:
            resolve(device)
        assert str(err.value) == message


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_refused(no_gpu, device):
    for resolve in (resolve_device, init_distributed):
        with pytest.raises(ValueError, match=f"--device {device}: CUDA is not available"):
            resolve(device)
