"""Run by ``torchrun --nproc_per_node 1`` from test_cuda_training.py: join an nccl process
group, train a few steps with the model wrapped in DDP and without, check the weights agree,
and write ``<out>/ddp-ok`` holding the backend. Usage: ddp_worker_cuda.py OUT"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from dualsparse.models.lm import RNNLanguageModel
from dualsparse.train.distributed import init_distributed

V = 24


def train(wrap: bool, info) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = RNNLanguageModel(V, 16, [32, 16], cell="egru",
                             cell_options={"threshold_mean": 0.05}).to(info.device)
    fwd = DDP(model, device_ids=[info.device.index]) if wrap else model
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        tok = torch.randint(0, V, (11, 4), generator=g).to(info.device)
        loss = torch.nn.functional.cross_entropy(fwd(tok[:-1])[0].reshape(-1, V),
                                                 tok[1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def main() -> None:
    out = Path(sys.argv[1])
    info = init_distributed("cuda")
    dist.init_process_group("nccl")  # one process: init_distributed joins only when WORLD_SIZE > 1
    try:
        plain, wrapped = train(False, info), train(True, info)
        for k, v in plain.items():
            assert torch.allclose(v, wrapped[k], rtol=1e-5, atol=1e-6), k
        t = torch.ones(1, device=info.device)
        dist.all_reduce(t)
        assert t.item() == 1.0
        (out / "ddp-ok").write_text(dist.get_backend() + "\n")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
