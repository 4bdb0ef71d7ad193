"""Tutorial 2: train an EGRU, then report its activity and MACs (and NeuroBench's metrics).

Walkthrough in ``docs/tutorials.md``. Steps:

1. train a two-layer EGRU (:class:`dualsparse.models.EGRU`, event-based GRU: a unit sends
   its output only when its internal state crosses its threshold) with a linear readout of
   its time-averaged output on the spiral task, with an activity penalty that pushes the
   event rate down;
2. measure it on the test sequences with an :class:`dualsparse.accounting.ActivityMeter`:
   activity sparsity per layer, backward sparsity, dense vs effective MACs per token;
3. write the report as JSON and print NeuroBench's metric names per sequence
   (:func:`dualsparse.neurobench_metrics.neurobench_metrics`).

Run::

    python examples/tutorial_egru_report.py --out /tmp/egru_report.json   # ~1 min, 2 cores
    python examples/tutorial_egru_report.py --quick                      # a few seconds
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dualsparse.accounting import ActivityMeter
from dualsparse.models import EGRU
from dualsparse.models.regularizers import activity_penalty
from dualsparse.neurobench_metrics import neurobench_metrics
from dualsparse.rtrl.tasks import spiral_task, split


class SpiralEGRU(nn.Module):
    """EGRU over the sequence, linear readout of the mean output: ``(T, B, 2) -> (B, 2)``."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.rnn = EGRU(2, hidden, num_layers=2, threshold_mean=0.1)
        self.readout = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor):
        out, _, seqs = self.rnn(x, return_sequences=True)
        return self.readout(out.mean(0)), seqs


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes and few steps (tests)")
    p.add_argument("--activity-penalty", type=float, default=0.05,
                   help="weight of the mean event rate in the loss")
    p.add_argument("--out", type=Path, default=None, help="write the report here (JSON)")
    args = p.parse_args(argv)
    if args.out is not None and args.out.exists():
        raise ValueError(f"--out {str(args.out)!r} exists; choose a new file")
    hidden, steps, n = (16, 10, 200) if args.quick else (32, 400, 3000)
    torch.manual_seed(0)
    data = split(*spiral_task(n, seq_len=17, seed=0))

    # 1. train: cross-entropy + activity penalty on the events of both layers
    model = SpiralEGRU(hidden)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    xs, labels = data["train"]
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        idx = torch.randint(0, labels.numel(), (64,), generator=g)
        logits, seqs = model(xs[:, idx])
        loss = F.cross_entropy(logits, labels[idx])
        loss = loss + activity_penalty([s.events for s in seqs], args.activity_penalty)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, steps // 5) == 0:
            print(f"step {step:4d}  loss {loss.item():.3f}")
    model.eval()

    # 2. measure on the test set (in eval mode, without gradients)
    xt, yt = data["test"]
    meter = ActivityMeter(model.rnn, decoder=model.readout)
    with torch.no_grad():
        out, _, seqs = model.rnn(xt, return_sequences=True)
        meter.update(xt, seqs)
        meter.update_decoder(out.mean(0))  # one readout per sequence, of the mean output
        acc = float((model.readout(out.mean(0)).argmax(1) == yt).double().mean())
    report = meter.report()
    print(f"test accuracy {acc:.3f}")
    print(report.format_table())

    # 3. JSON report and NeuroBench's metric names (per sequence)
    nb = neurobench_metrics(report, samples=xt.size(1), model=model)
    print(json.dumps(nb, indent=2))
    result = {"accuracy": acc, "accounting": report.to_dict(), "neurobench": nb}
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
