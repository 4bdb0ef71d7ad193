"""Online learning over one long stream: sparse RTRL vs dense RTRL vs truncated BPTT.

Task (:func:`~dualsparse.rtrl.tasks.delayed_recall_stream`): a cue shows one of ``--symbols``
symbols, ``--delay-min .. --delay-max`` blank steps later a query asks for it, and the next cue
follows, all in one unbroken stream (batch 1, the state is never reset). The network learns
while it reads the stream, one Adam step per query:

* ``sparse-rtrl`` / ``dense-rtrl``: :class:`SparseRTRL` / :class:`DenseRTRL` inside an
  :class:`OnlineLearner` (``update="step"``). The influence matrix is never truncated, so the
  query's loss reaches the cue however long ago it was. Both compute the same gradients; they
  differ only in time per step and memory.
* ``tbptt``: autograd through windows of ``--tbptt-window`` steps (state carried, graph cut at
  each window's start), one Adam step per window. With a window shorter than ``--delay-min``
  no gradient path links a query to its cue.

Every method starts from the same cell and readout and gets the same wall-clock budget
(``--budget-s`` seconds of learning, one thread). Reported per method: steps and queries
processed, time per step, memory held for the gradient (RTRL: the influence matrix and its
work buffers; TBPTT: the bytes autograd saves for one window, measured with
``saved_tensors_hooks``), online accuracy over the last ``--recent`` queries, and the accuracy
of the final network on a fresh stream of ``--eval-length`` steps (no learning).

Example (full run, about 5 minutes at one thread)::

    .venv/bin/python examples/rtrl_online.py --out /tmp/rtrl_online.json

``--quick`` runs a few seconds per method (used by the tests).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from dualsparse.atomic import atomic_write_text
from dualsparse.models import EGRUCell
from dualsparse.rtrl import DenseRTRL, SparseRTRL
from dualsparse.rtrl.learner import OnlineLearner
from dualsparse.rtrl.tasks import RecallStream, delayed_recall_stream
from dualsparse.validation import check_int, check_real

METHODS = ("sparse-rtrl", "dense-rtrl", "tbptt")


def make_model(args) -> tuple[EGRUCell, nn.Linear, dict[str, torch.Tensor]]:
    """The initial cell (narrow surrogate: sparse activity), readout and W_hh mask."""
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    cell = EGRUCell(args.symbols + 1, args.hidden, threshold_mean=args.threshold_mean,
                    surrogate_width=args.surrogate_width, dtype=dtype)
    g = torch.Generator().manual_seed(args.seed + 1)
    masks = {"weight_hh": torch.rand(3 * args.hidden, args.hidden, generator=g)
             >= args.weight_sparsity}
    with torch.no_grad():
        cell.weight_hh.mul_(masks["weight_hh"])
    readout = nn.Linear(args.hidden, args.symbols, dtype=dtype)
    return cell, readout, masks


def _log_curve(curve: list[dict], correct: list[bool], t0: float, args) -> None:
    """Every ``--recent`` queries: elapsed seconds and accuracy over the last ``--recent``."""
    if len(correct) % args.recent == 0:
        recent = correct[-args.recent:]
        curve.append({"seconds": time.perf_counter() - t0, "queries": len(correct),
                      "acc": sum(recent) / len(recent)})


def run_rtrl(engine_cls, cell, readout, masks, stream: RecallStream, args) -> dict:
    params = [*cell.parameters(), *readout.parameters()]
    opt = torch.optim.Adam(params, lr=args.lr)
    engine = engine_cls(cell, masks)
    learner = OnlineLearner(engine, readout, opt, update="step", clip_norm=args.clip)
    learner.start(1)
    correct: list[bool] = []
    curve: list[dict] = []
    t0 = time.perf_counter()
    steps = 0
    active = 0.0
    for x, tgt in zip(stream.inputs, stream.targets, strict=True):
        target = tgt.view(1) if int(tgt) >= 0 else None
        pred, _ = learner.observe(x, target)
        active += float((engine.last.a != 0).double().mean())
        if target is not None:
            correct.append(int(pred.argmax(1)) == int(tgt))
            engine.counter.clear()          # keep the counter's memory bounded
            _log_curve(curve, correct, t0, args)
        steps += 1
        if time.perf_counter() - t0 > args.budget_s:
            break
    elapsed = time.perf_counter() - t0
    return {"steps": steps, "queries": len(correct), "seconds": elapsed,
            "ms_per_step": 1e3 * elapsed / steps, "memory_bytes": engine.influence_bytes(1),
            "active_fraction": active / steps, "correct": correct, "curve": curve}


def run_tbptt(cell, readout, stream: RecallStream, args) -> dict:
    params = [*cell.parameters(), *readout.parameters()]
    opt = torch.optim.Adam(params, lr=args.lr)
    k = args.tbptt_window
    state = None
    correct: list[bool] = []
    curve: list[dict] = []
    saved = [0, 0]                              # bytes in the current window, max over windows

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    t0 = time.perf_counter()
    steps = 0
    n = stream.inputs.size(0)
    while steps < n and time.perf_counter() - t0 <= args.budget_s:
        xs, ts = stream.inputs[steps:steps + k], stream.targets[steps:steps + k]
        saved[0] = 0
        losses = []
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            for x, tgt in zip(xs, ts, strict=True):
                y, state = cell(x, state)
                if int(tgt) >= 0:
                    logits = readout(y)
                    losses.append(F.cross_entropy(logits, tgt.view(1)))
                    correct.append(int(logits.argmax(1)) == int(tgt))
                    _log_curve(curve, correct, t0, args)
        saved[1] = max(saved[1], saved[0])
        if losses:
            opt.zero_grad(set_to_none=True)
            torch.stack(losses).sum().backward()
            if args.clip is not None:
                nn.utils.clip_grad_norm_(params, args.clip)
            opt.step()
        state = type(state)(*(s.detach() for s in state))
        steps += xs.size(0)
    elapsed = time.perf_counter() - t0
    return {"steps": steps, "queries": len(correct), "seconds": elapsed,
            "ms_per_step": 1e3 * elapsed / steps, "memory_bytes": saved[1],
            "correct": correct, "curve": curve}


@torch.no_grad()
def evaluate(cell, readout, stream: RecallStream) -> float:
    """Accuracy at the query steps of ``stream`` (no learning, state carried throughout)."""
    state, right, total = None, 0, 0
    for x, tgt in zip(stream.inputs, stream.targets, strict=True):
        y, state = cell(x, state)
        if int(tgt) >= 0:
            right += int(readout(y).argmax(1)) == int(tgt)
            total += 1
    return right / total


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--symbols", type=int, default=2)
    ap.add_argument("--delay-min", type=int, default=8)
    ap.add_argument("--delay-max", type=int, default=16)
    ap.add_argument("--tbptt-window", type=int, default=5,
                    help="TBPTT window in steps (shorter than --delay-min: cannot learn)")
    ap.add_argument("--weight-sparsity", type=float, default=0.5,
                    help="fraction of W_hh pruned (fixed random mask) for every method")
    ap.add_argument("--surrogate-width", type=float, default=0.3,
                    help="half-width of the surrogate's support (narrow = sparse activity)")
    ap.add_argument("--threshold-mean", type=float, default=0.3)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip per update")
    ap.add_argument("--budget-s", type=float, default=80.0,
                    help="wall-clock seconds of learning per method")
    ap.add_argument("--stream-length", type=int, default=400_000,
                    help="steps available (a method stops at the budget or the stream's end)")
    ap.add_argument("--eval-length", type=int, default=5_000)
    ap.add_argument("--recent", type=int, default=100,
                    help="online accuracy over this many last queries")
    ap.add_argument("--solved-acc", type=float, default=0.95,
                    help="report the time when the online accuracy first reaches this")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true",
                    help="tiny run: 2 s per method, short streams (for tests)")
    ap.add_argument("--out", default=None,
                    help="write results as JSON here (refuses to overwrite an existing file)")
    args = ap.parse_args(argv)
    if args.quick:
        args.budget_s, args.stream_length, args.eval_length = 2.0, 3_000, 1_000
        args.hidden = min(args.hidden, 16)
    for name in ("hidden", "symbols", "tbptt_window", "stream_length", "eval_length",
                 "recent", "threads"):
        check_int(f"--{name.replace('_', '-')}", getattr(args, name), low=1)
    check_int("--delay-max", args.delay_max, low=check_int("--delay-min", args.delay_min, low=0))
    check_real("--weight-sparsity", args.weight_sparsity, low=0.0, high=1.0, high_open=True)
    check_real("--budget-s", args.budget_s, low=0.0, low_open=True)
    if args.out and os.path.exists(args.out):
        raise FileExistsError(f"--out {args.out} exists; not overwriting it")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    stream = delayed_recall_stream(args.stream_length, args.delay_min, args.delay_max,
                                   args.symbols, seed=args.seed, dtype=dtype)
    held_out = delayed_recall_stream(args.eval_length, args.delay_min, args.delay_max,
                                     args.symbols, seed=args.seed + 100, dtype=dtype)
    cell0, readout0, masks = make_model(args)
    results: dict = {"args": vars(args), "chance": 1.0 / args.symbols}
    print(f"# H={args.hidden}, delays {args.delay_min}-{args.delay_max}, "
          f"TBPTT window {args.tbptt_window}, W_hh sparsity {args.weight_sparsity}, "
          f"{args.budget_s:.0f} s per method, threads={args.threads}, {args.dtype}")
    print("| method | steps | queries | ms/step | memory held (kB) | lambda_a | online acc. "
          f"(last {args.recent}) | held-out acc. | s to {args.solved_acc:.0%} online acc. |")
    print("|---|---|---|---|---|---|---|---|---|")
    for method in args.methods:
        cell, readout = copy.deepcopy(cell0), copy.deepcopy(readout0)
        if method == "tbptt":
            res = run_tbptt(cell, readout, stream, args)
        else:
            cls = SparseRTRL if method == "sparse-rtrl" else DenseRTRL
            res = run_rtrl(cls, cell, readout, masks, stream, args)
        recent = res.pop("correct")[-args.recent:]
        res["online_acc"] = sum(recent) / len(recent) if recent else float("nan")
        res["held_out_acc"] = evaluate(cell, readout, held_out)
        good = [c for c in res["curve"] if c["acc"] >= args.solved_acc]
        res["seconds_to_solve"] = good[0]["seconds"] if good else None
        results[method] = res
        lam = res.get("active_fraction")
        solved = res["seconds_to_solve"]
        print(f"| {method} | {res['steps']} | {res['queries']} | {res['ms_per_step']:.3f} | "
              f"{res['memory_bytes'] / 1e3:.1f} | {'-' if lam is None else f'{lam:.3f}'} | "
              f"{res['online_acc']:.3f} | {res['held_out_acc']:.3f} | "
              f"{'not reached' if solved is None else f'{solved:.1f}'} |", flush=True)
    if args.out:
        atomic_write_text(args.out, json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
