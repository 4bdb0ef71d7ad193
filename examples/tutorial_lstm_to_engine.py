"""Tutorial 1: from a trained ``torch.nn.LSTM`` to a pruned model run by the sparse engine.

Walkthrough in ``docs/tutorials.md``. Steps:

1. train a plain ``torch.nn.LSTM`` + ``nn.Linear`` readout on the spiral task (turning
   direction of a 2-D point sequence, from :mod:`dualsparse.rtrl.tasks`);
2. prune its weights in 16x1 blocks with gradual (AGP) pruning while fine-tuning
   (:class:`dualsparse.sparsity.Pruner`), then make the zeros permanent;
3. pack it for the event-driven engine (:class:`dualsparse.engine.SparseRuntime`) and check
   that the engine computes what PyTorch computes;
4. count what the pruning saves (:func:`dualsparse.accounting.measure`, which accepts the
   ``torch.nn.LSTM`` as it is) and print NeuroBench's metric names.

Run::

    python examples/tutorial_lstm_to_engine.py            # ~1 min on 2 cores
    python examples/tutorial_lstm_to_engine.py --quick    # a few seconds (used by the tests)
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch import nn

from dualsparse.accounting import measure
from dualsparse.engine import SparseRuntime
from dualsparse.neurobench_metrics import neurobench_metrics
from dualsparse.rtrl.tasks import spiral_task, split
from dualsparse.sparsity import AGPSchedule, Pruner


class SpiralLSTM(nn.Module):
    """``nn.LSTM``, a linear readout of its mean output over time: ``(T, B, 2) -> (B, 2)``."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(2, hidden, num_layers=2)
        self.readout = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.readout(out.mean(0))


def accuracy(model: SpiralLSTM, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    xs, labels = data
    with torch.no_grad():
        return float((model(xs).argmax(1) == labels).double().mean())


def train(model: SpiralLSTM, data, steps: int, pruner: Pruner | None = None,
          batch: int = 64, lr: float = 1e-2, seed: int = 0) -> None:
    xs, labels = data
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    if pruner is not None:
        pruner.attach_optimizer(opt)  # pruned weights' optimiser state is reset
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, labels.numel(), (batch,), generator=g)
        loss = F.cross_entropy(model(xs[:, idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if pruner is not None:
            pruner.step(step)  # masks follow the schedule
    model.eval()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes and few steps (tests)")
    p.add_argument("--sparsity", type=float, default=0.8, help="final weight sparsity")
    args = p.parse_args(argv)
    hidden, steps, n = (16, 20, 200) if args.quick else (64, 400, 3000)
    torch.manual_seed(0)
    data = split(*spiral_task(n, seq_len=17, seed=0))

    # 1. a trained torch.nn.LSTM (here trained on the spot)
    model = SpiralLSTM(hidden)
    train(model, data["train"], steps)
    dense_acc = accuracy(model, data["test"])
    print(f"dense nn.LSTM: test accuracy {dense_acc:.3f}")

    # 2. prune the LSTM's weight matrices in 16x1 blocks (AGP), fine-tuning as it goes
    spec = {"tensors": ["lstm.weight_*"], "sparsity": args.sparsity, "block": [16, 1]}
    schedule = AGPSchedule(start=0, end=steps // 2, frequency=steps // 10)
    pruner = Pruner(model, spec, schedule)
    train(model, data["train"], steps, pruner=pruner, seed=1)
    print(pruner.format_report())
    pruner.finalize()  # zeros are permanent; model.lstm is a plain nn.LSTM again
    pruned_acc = accuracy(model, data["test"])
    print(f"pruned to {args.sparsity:.0%}: test accuracy {pruned_acc:.3f}")

    # 3. pack and run: the engine computes the same outputs as PyTorch
    xs = data["test"][0]
    runtime = SparseRuntime.from_model(model.lstm)
    engine_out = runtime.run(xs)
    with torch.no_grad():
        torch_out, _ = model.lstm(xs)
        engine_logits = model.readout(engine_out.mean(0))
    max_diff = float((engine_out - torch_out).abs().max())
    engine_acc = float((engine_logits.argmax(1) == data["test"][1]).double().mean())
    print(f"engine vs PyTorch: max |difference| {max_diff:.2e}, engine accuracy {engine_acc:.3f}")

    # 4. what the pruning saves, per token and in NeuroBench's names (per sequence)
    report = measure(model.lstm, xs, decoder=None)
    print(report.format_table())
    nb = neurobench_metrics(report, samples=xs.size(1), model=model)
    print(json.dumps(nb, indent=2))
    return {"dense_acc": dense_acc, "pruned_acc": pruned_acc, "engine_acc": engine_acc,
            "max_diff": max_diff, "reduction": report.rnn_reduction, "neurobench": nb,
            "weight_sparsity": 1.0 - report.layers[0].weight_density_hh}


if __name__ == "__main__":
    main()
