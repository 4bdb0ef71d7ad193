"""Learning demo: the spiral task learned by BPTT and by sparse exact RTRL (online learner).

Three runs from the same initial network and the same batches:

* ``bptt``: autograd through the cell over each sequence, loss at the last step;
* ``rtrl``: :class:`SparseRTRL` + :class:`OnlineLearner`, loss at the last step, update at the
  end of each sequence (the same gradient as BPTT, computed forward in time);
* ``rtrl-online`` (``--online``): loss at every step from ``--online-from`` on, parameters
  updated after every step (no BPTT counterpart without truncation).

Prints validation loss/accuracy every ``--eval-every`` updates and, for the RTRL runs, the
counted MAC reduction of the sparse engine. Example::

    .venv/bin/python examples/rtrl_spiral.py --iterations 250 --online --out /tmp/curves.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time

import torch
import torch.nn.functional as F

from dualsparse.models import EGRUCell
from dualsparse.rtrl import SparseRTRL, run_cell
from dualsparse.rtrl.learner import OnlineLearner
from dualsparse.rtrl.tasks import spiral_task, split


@torch.no_grad()
def evaluate(cell, readout, data) -> tuple[float, float]:
    xs, labels = data
    logits = readout(run_cell(cell, xs)[-1])
    return float(F.cross_entropy(logits, labels)), float((logits.argmax(1) == labels).double()
                                                         .mean())


def batches(train, batch: int, iterations: int, seed: int):
    xs, labels = train
    g = torch.Generator().manual_seed(seed)
    for _ in range(iterations):
        idx = torch.randint(0, labels.numel(), (batch,), generator=g)
        yield xs[:, idx], labels[idx]


def train(mode: str, cell, readout, data, args) -> dict:
    opt = torch.optim.Adam([*cell.parameters(), *readout.parameters()], lr=args.lr)
    learner = None
    if mode != "bptt":
        engine = SparseRTRL(cell)
        learner = OnlineLearner(engine, readout, opt,
                                update="step" if mode == "rtrl-online" else "sequence")
    curve, red = [], []
    t0 = time.perf_counter()
    for it, (xs, labels) in enumerate(batches(data["train"], args.batch, args.iterations,
                                              args.seed), start=1):
        if learner is None:
            opt.zero_grad()
            loss = F.cross_entropy(readout(run_cell(cell, xs)[-1]), labels)
            loss.backward()
            opt.step()
        else:
            learner.start(xs.size(1))
            last = xs.size(0) - 1
            for t in range(xs.size(0)):
                with_loss = t == last or (mode == "rtrl-online" and t >= args.online_from)
                learner.observe(xs[t], labels if with_loss else None)
            learner.apply()
            red.append(learner.engine.counter.summary()["reduction"])
        if it % args.eval_every == 0 or it == args.iterations:
            vl, va = evaluate(cell, readout, data["valid"])
            curve.append({"iteration": it, "valid_loss": vl, "valid_acc": va})
            extra = f"  MAC reduction {sum(red) / len(red):.2f}" if red else ""
            print(f"{mode:12s} it {it:5d}  valid loss {vl:.4f}  acc {va:.3f}{extra}", flush=True)
    tl, ta = evaluate(cell, readout, data["test"])
    return {"curve": curve, "test_loss": tl, "test_acc": ta,
            "mean_mac_reduction": sum(red) / len(red) if red else None,
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=17)
    ap.add_argument("--sequences", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=250)
    ap.add_argument("--lr", type=float, default=3e-2)
    ap.add_argument("--threshold-mean", type=float, default=0.1)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--online", action="store_true", help="also run rtrl-online")
    ap.add_argument("--online-from", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write curves as JSON here (atomically)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    xs, labels = spiral_task(args.sequences, args.seq_len, seed=args.seed, dtype=torch.float64)
    data = split(xs, labels)
    torch.manual_seed(args.seed)
    cell0 = EGRUCell(2, args.hidden, threshold_mean=args.threshold_mean, dtype=torch.float64)
    readout0 = torch.nn.Linear(args.hidden, 2, dtype=torch.float64)
    results = {"args": vars(args)}
    for mode in ["bptt", "rtrl"] + (["rtrl-online"] if args.online else []):
        res = train(mode, copy.deepcopy(cell0), copy.deepcopy(readout0), data, args)
        print(f"{mode:12s} test loss {res['test_loss']:.4f}  acc {res['test_acc']:.3f}  "
              f"({res['seconds']:.0f} s)", flush=True)
        results[mode] = res
    if args.out:
        d = os.path.dirname(os.path.abspath(args.out))
        with tempfile.NamedTemporaryFile("w", dir=d, delete=False, suffix=".tmp") as f:
            json.dump(results, f, indent=1)
        os.replace(f.name, args.out)


if __name__ == "__main__":
    main()
