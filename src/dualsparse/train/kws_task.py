"""Keyword spotting on FSDD: GRU vs eGRU (float) vs eGRU (quantisation-aware, deployed).

``python -m dualsparse.train.kws_task --model egru-q --split speaker --epochs 30 --out runs/x``

Trains a :class:`~dualsparse.models.egru_embedded.KWSNet` with Adam on the training split, keeps
the parameters of the epoch with the best validation accuracy, and reports test accuracy.  For
``egru``/``egru-q`` the model is also converted to the bit-exact integer model
(:func:`~dualsparse.embedded.reference.deploy`) and evaluated on Q15 features ("deployed").
(For the float ``egru`` this is post-training quantisation, reported as ``deployed_kind: ptq``.)
With ``--out`` it writes ``config.json``, ``metrics.json``, ``model.pt`` and, for eGRU models,
the generated C into ``out/c/``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dualsparse.atomic import atomic_write_json
from dualsparse.data.audio import FEATURE_KINDS, FSDD_SPEAKERS, FrontEnd, load_fsdd, split_fsdd
from dualsparse.models.egru_embedded import KWSNet

MODELS = ("gru", "egru", "egru-q")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the KWS flags to ``parser``."""
    g = parser.add_argument_group("kws")
    g.add_argument("--model", choices=MODELS, default="egru-q")
    g.add_argument("--split", choices=("random", "speaker"), default="random",
                   help="random: official FSDD split (takes 0-4 test); speaker: held-out speakers")
    g.add_argument("--test-speakers", default="theo,yweweler",
                   help=f"comma-separated test speakers for --split speaker ({FSDD_SPEAKERS})")
    g.add_argument("--features", choices=FEATURE_KINDS, default="fft")
    g.add_argument("--hidden", default="32,20", help="hidden sizes per layer, comma-separated")
    g.add_argument("--bits", type=int, default=3, help="weight bits for egru-q (2..5)")
    g.add_argument("--zero-rule", choices=("paper", "code"), default="paper")
    g.add_argument("--reset-gate", action="store_true", help="egru ablation: keep the reset gate")
    g.add_argument("--epochs", type=int, default=30)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--lr", type=float, default=3e-3)
    g.add_argument("--clip", type=float, default=1.0, help="gradient norm clip (0 = off)")
    g.add_argument("--max-train", type=int, default=0, help="use at most N training clips (0=all)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    g.add_argument("--data", default=None, help="data folder (default $DUALSPARSE_DATA)")
    g.add_argument("--out", default=None, help="output folder for config, metrics, model, C")


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int = 500) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), bs):
            correct += (model(x[:, i : i + bs]).argmax(1) == y[i : i + bs]).sum().item()
    return correct / max(len(y), 1)


def run(args: argparse.Namespace) -> dict:
    """Train and evaluate one model; print a short report; return the metrics dict."""
    if args.epochs < 0 or args.batch_size < 1 or args.lr <= 0:
        raise ValueError("need epochs >= 0, batch_size >= 1, lr > 0")
    hidden = tuple(int(h) for h in str(args.hidden).split(",") if h.strip())
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(max(1, args.threads))
    t0 = time.time()
    fe = FrontEnd(features=args.features)
    data = load_fsdd(fe, data_dir=args.data)
    spk = tuple(s.strip() for s in args.test_speakers.split(",") if s.strip())
    idx = split_fsdd(data, args.split, test_speakers=spk)
    if args.max_train:
        idx["train"] = rng.permutation(idx["train"])[: args.max_train]
    X = torch.from_numpy(data.x).transpose(0, 1).contiguous()  # (T, N, F)
    Y = torch.from_numpy(data.y)
    model = KWSNet(args.model, fe.n_features, hidden, 10, quant_bits=args.bits,
                   zero_rule=args.zero_rule, reset_gate=args.reset_gate)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(args.epochs, 1))
    xv, yv = X[:, idx["val"]], Y[idx["val"]]
    best = (-1.0, copy.deepcopy(model.state_dict()), 0)
    history = []
    for ep in range(args.epochs):
        model.train()
        perm = rng.permutation(idx["train"])
        tot, n = 0.0, 0
        for i in range(0, len(perm), args.batch_size):
            b = perm[i : i + args.batch_size]
            loss = nn.functional.cross_entropy(model(X[:, b]), Y[b])
            opt.zero_grad()
            loss.backward()
            if args.clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            tot, n = tot + loss.item() * len(b), n + len(b)
        sched.step()
        va = _accuracy(model, xv, yv)
        history.append({"epoch": ep + 1, "loss": tot / max(n, 1), "val_acc": va})
        print(f"epoch {ep + 1:3d} loss {tot / max(n, 1):.4f} val {va:.4f}", flush=True)
        if va > best[0]:
            best = (va, copy.deepcopy(model.state_dict()), ep + 1)
    model.load_state_dict(best[1])
    xt, yt = X[:, idx["test"]], Y[idx["test"]]
    metrics: dict = {
        "model": args.model, "split": args.split, "features": args.features,
        "hidden": list(hidden), "seed": args.seed, "epochs": args.epochs,
        "best_epoch": best[2], "val_acc": best[0] if args.epochs else None,
        "test_acc": _accuracy(model, xt, yt), "n_train": len(idx["train"]),
        "n_test": len(idx["test"]), "params": model.num_weights(),
        "float_bytes": 4 * model.num_weights(), "history": history,
    }
    if args.split == "speaker":
        metrics["test_speakers"] = list(spk)
    deployed = None
    if args.model in ("egru", "egru-q") and not args.reset_gate:
        from dualsparse.embedded.quant import to_q15
        from dualsparse.embedded.reference import deploy

        deployed = deploy(model, bits=args.bits)
        xq = to_q15(data.x[idx["test"]])
        logits_i, _ = deployed.run(xq)
        pred_i = np.argmax(logits_i, axis=1)
        model.eval()
        with torch.no_grad():
            pred_f = model(xt).argmax(1).numpy()
        metrics.update(
            deployed_test_acc=float((pred_i == data.y[idx["test"]]).mean()),
            deployed_agreement=float((pred_i == pred_f).mean()),
            deployed_bytes=deployed.model_bytes(),
            deployed_kind="qat" if args.model == "egru-q" else "ptq",
            bits=args.bits,
        )
        if args.model == "egru-q":
            with torch.no_grad():
                lf = (model(xt) / model.logit_gain).numpy()
            metrics["max_logit_diff_float_vs_int"] = float(np.abs(logits_i / 32768 - lf).max())
    metrics["seconds"] = round(time.time() - t0, 1)
    line = (f"[kws] {args.model} split={args.split} test_acc={metrics['test_acc']:.4f}"
            f" params={metrics['params']} float_bytes={metrics['float_bytes']}")
    if deployed is not None:
        line += (f" deployed_acc={metrics['deployed_test_acc']:.4f}"
                 f" deployed_bytes={metrics['deployed_bytes']}")
    print(line, flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        cfg = {k: v for k, v in vars(args).items() if isinstance(v, str | int | float | bool)
               or v is None}
        cfg["frontend"] = fe.__dict__.copy()
        atomic_write_json(out / "config.json", cfg)
        atomic_write_json(out / "metrics.json", metrics)
        torch.save({"state_dict": model.state_dict(), "config": cfg}, out / "model.pt")
        if deployed is not None:
            from dualsparse.embedded.codegen import emit_c

            emit_c(deployed, out / "c")
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dualsparse.train.kws_task", description=__doc__)
    add_arguments(p)
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
