"""Run by ``torchrun --nproc_per_node 2`` from test_ddp.py: parse ``dualsparse train`` flags,
train with DDP on CPU (gloo), and write this rank's initial and final weights to
``<out>/rank{r}-{initial,final}.safetensors``. Usage: ddp_worker.py OUT -- TRAIN_FLAGS..."""

from __future__ import annotations

import sys
from pathlib import Path

from safetensors.torch import save_file

from dualsparse.apps.lm.commands import build_trainer
from dualsparse.apps.lm.config import LMConfig
from dualsparse.cli import build_train_parser
from dualsparse.train import checkpoint as ckpt
from dualsparse.train.distributed import cleanup, init_distributed


def main() -> None:
    out = Path(sys.argv[1])
    argv = sys.argv[3:]
    args = build_train_parser(argv).parse_args(argv)
    dist = init_distributed("cpu")
    try:
        trainer = build_trainer(LMConfig.from_namespace(args), dist)
        tensors, _ = ckpt.model_tensors(trainer.model)
        save_file(tensors, str(out / f"rank{dist.rank}-initial.safetensors"))
        trainer.fit()
        tensors, _ = ckpt.model_tensors(trainer.model)
        save_file(tensors, str(out / f"rank{dist.rank}-final.safetensors"))
    finally:
        cleanup(dist)


if __name__ == "__main__":
    main()
