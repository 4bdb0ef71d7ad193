"""``dualsparse train --task kws``: train a KWSNet on FSDD with the common Trainer, test it,
and for eGRU models deploy it bit-exactly to integers and emit C.

``dualsparse train --task kws --model egru-q --split speaker --epochs 30 --out runs/x``

Trains a :class:`~dualsparse.models.egru_embedded.KWSNet` (AdamW without weight decay, cosine
schedule per optimiser step, gradient clipping) for ``--epochs`` passes over the training
clips, evaluates on the validation clips after every epoch and keeps as ``best`` the
checkpoint with the lowest validation error, then reports test accuracy of ``best`` (of the
final weights without ``--out``). For ``egru``/``egru-q`` the model is also converted to the
bit-exact integer model (:func:`~dualsparse.embedded.reference.deploy`) and evaluated on Q15
features ("deployed"; for the float ``egru`` this is post-training quantisation,
``deployed_kind: ptq``).

With ``--out DIR`` (a new folder, one to ``--resume``, or one whose run ``--overwrite``
replaces; the folder is locked while the run trains): ``config.json``, the Trainer's
checkpoints ``latest``/``best`` (safetensors + JSON, :mod:`dualsparse.train.checkpoint`),
``metrics.csv`` (one train and one valid row per epoch, with ``accuracy``),
``metrics.json`` and, for eGRU models, the generated C in ``DIR/c/``.

Table mode (``--seeds 0,1,2 --splits random,speaker --models gru,egru,egru-q --out RUNS
--results DIR``): every combination is such a run under ``RUNS`` and one results JSON in
``DIR``, see :mod:`dualsparse.apps.kws.table`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dualsparse.apps.kws import table
from dualsparse.apps.kws.task import KWSTask
from dualsparse.atomic import atomic_write_json
from dualsparse.data.audio import FEATURE_KINDS, FSDD_SPEAKERS, FrontEnd, load_fsdd, split_fsdd
from dualsparse.data.augment import MAX_SCALE, FeatureAugment
from dualsparse.embedded.codegen import emit_c
from dualsparse.embedded.quant import decode_pow2, to_q15
from dualsparse.embedded.reference import deploy
from dualsparse.models.egru_embedded import KWSNet
from dualsparse.train import checkpoint as ckpt
from dualsparse.train.config import TrainConfig
from dualsparse.train.loop import Trainer, set_seed
from dualsparse.train.run_dir import RunLock, clear_run, prepare_run_dir
from dualsparse.validation import check_int, check_real

MODELS = table.MODELS
#: --aug-* flags (argparse names) -> FeatureAugment fields; runs saved before them had none (0)
AUGMENT_FLAGS = ("aug_warp", "aug_stretch", "aug_freq_mask", "aug_time_mask")
# run settings that must be equal to resume a run (the model and the data it sees)
RESUME_KEYS = ("model", "split", "test_speakers", "features", "hidden", "dense", "dense_shift",
               "bits", "zero_rule", "reset_gate", "logit_gain", "epochs", "batch_size", "lr",
               "clip", "max_train", "seed", *AUGMENT_FLAGS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the KWS flags to ``parser``."""
    g = parser.add_argument_group("kws")
    g.add_argument("--model", choices=MODELS, default="egru-q")
    g.add_argument("--split", choices=("random", "speaker"), default="random",
                   help="random: official FSDD split (takes 0-4 test); speaker: held-out speakers")
    g.add_argument("--test-speakers", default="theo,yweweler",
                   help=f"comma-separated test speakers for --split speaker ({FSDD_SPEAKERS})")
    g.add_argument("--features", choices=FEATURE_KINDS, default="fft")
    g.add_argument("--gain", type=float, default=4.0,
                   help="front-end gain of the fft features (|X| * gain, clipped to [0, 1))")
    g.add_argument("--logit-gain", type=float, default=4.0,
                   help="egru-q: fixed logit factor in training only (the argmax ignores it)")
    g.add_argument("--hidden", default="32,20", help="hidden sizes per layer, comma-separated")
    g.add_argument("--dense", default="",
                   help="widths of dense ReLU layers between the last recurrent layer and the "
                        "readout, comma-separated (the paper: 16; default: none)")
    g.add_argument("--dense-shift", default="auto",
                   help="egru-q: right shift of each dense layer's accumulator before the "
                        "ReLU, comma-separated, one per --dense layer (default auto: "
                        "ceil(log2(fan-in)))")
    g.add_argument("--bits", type=int, default=3, help="weight bits for egru-q (2..5)")
    g.add_argument("--zero-rule", choices=("paper", "code"), default="paper")
    g.add_argument("--reset-gate", action="store_true", help="egru ablation: keep the reset gate")
    g.add_argument("--epochs", type=int, default=30, help="passes over the training clips")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--lr", type=float, default=3e-3)
    g.add_argument("--clip", type=float, default=1.0, help="gradient norm clip (0 = off)")
    g.add_argument("--max-train", type=int, default=0, help="use at most N training clips (0=all)")
    g.add_argument("--aug-warp", type=float, default=0.0,
                   help="augmentation: scale each training clip's frequency axis by "
                        "U(1-a, 1+a) (vocal-tract-length perturbation; 0 = off)")
    g.add_argument("--aug-stretch", type=float, default=0.0,
                   help="augmentation: scale each training clip's time axis by U(1-a, 1+a) "
                        "(0 = off)")
    g.add_argument("--aug-freq-mask", type=int, default=0,
                   help="augmentation: zero one band of up to N bins per training clip (0 = off)")
    g.add_argument("--aug-time-mask", type=int, default=0,
                   help="augmentation: zero one band of up to N frames per training clip "
                        "(0 = off)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    g.add_argument("--data", default=None, help="data folder (default $DUALSPARSE_DATA)")
    g.add_argument("--out", default=None,
                   help="run folder: config, checkpoints, metrics, C (must be new unless "
                        "--resume)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (default: refuse such a folder)")
    g.add_argument("--seeds", default=None,
                   help="table mode: comma-separated seeds; with --splits/--models every "
                        "combination is a run folder under --out and a JSON file in --results")
    g.add_argument("--splits", default=None, help="table mode: e.g. random,speaker")
    g.add_argument("--models", default=None, help="table mode: e.g. gru,egru,egru-q")
    g.add_argument("--model-lr", default=None,
                   help="table mode: per-model learning rates overriding --lr, e.g. egru-q=2e-2")
    g.add_argument("--results", default=None,
                   help="table mode: folder of the per-run results JSON (never overwritten)")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (there is none anyway when stderr is not a terminal)")


def _check_args(args: argparse.Namespace
                ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Check the flags; return the hidden and the dense sizes and the dense shifts."""
    check_int("--epochs", args.epochs, low=1)
    check_int("--batch-size", args.batch_size, low=1)
    check_real("--lr", args.lr, low=0.0, low_open=True)
    check_real("--clip", args.clip, low=0.0)
    check_int("--max-train", args.max_train, low=0)
    check_int("--threads", args.threads, low=1)
    check_real("--gain", args.gain, low=0.0, low_open=True)
    check_real("--logit-gain", args.logit_gain, low=0.0, low_open=True)
    augment_from_args(args)
    hidden = table.parse_sizes("--hidden", args.hidden)
    dense = table.parse_sizes("--dense", getattr(args, "dense", ""), allow_empty=True)
    shifts = table.parse_dense_shift(getattr(args, "dense_shift", "auto"), args.model, hidden,
                                     dense)
    if args.resume and not args.out:
        raise ValueError("--resume needs --out pointing at the run folder")
    if args.out:
        prepare_run_dir(args.out, resume=args.resume, overwrite=getattr(args, "overwrite", False),
                        flag="--out")
    return hidden, dense, shifts


def augment_from_args(args: argparse.Namespace) -> FeatureAugment:
    """The ``--aug-*`` flags as a :class:`FeatureAugment` (errors name the flag)."""
    values = {k: getattr(args, k, 0) for k in AUGMENT_FLAGS}
    check_real("--aug-warp", values["aug_warp"], low=0.0, high=MAX_SCALE)
    check_real("--aug-stretch", values["aug_stretch"], low=0.0, high=MAX_SCALE)
    check_int("--aug-freq-mask", values["aug_freq_mask"], low=0)
    check_int("--aug-time-mask", values["aug_time_mask"], low=0)
    return FeatureAugment(values["aug_warp"], values["aug_stretch"], values["aug_freq_mask"],
                          values["aug_time_mask"])


def _run_config(args: argparse.Namespace, fe: FrontEnd) -> dict[str, Any]:
    cfg = {k: v for k, v in vars(args).items()
           if isinstance(v, str | int | float | bool) or v is None}
    cfg["frontend"] = fe.__dict__.copy()
    return cfg


def _check_resumable(out: Path, run_config: dict[str, Any]) -> None:
    saved = dict(ckpt.read_checkpoint_meta(out, "latest").get("run_config") or {})
    # runs saved before --dense / --dense-shift existed: no dense layers / unshifted ones
    saved.setdefault("dense", "")
    n_dense = len(table.parse_sizes("dense", saved["dense"], allow_empty=True))
    saved.setdefault("dense_shift", table.shift_text((0,) * n_dense))
    for k in AUGMENT_FLAGS:  # runs saved before augmentation existed
        saved.setdefault(k, 0.0 if k in ("aug_warp", "aug_stretch") else 0)
    diff = {k: (saved.get(k), run_config.get(k)) for k in (*RESUME_KEYS, "frontend")
            if saved.get(k) != run_config.get(k)}
    if diff:
        raise ValueError("cannot --resume: the run in --out was made with other settings "
                         "(saved, now): " + ", ".join(f"{k}={a!r}->{b!r}"
                                                      for k, (a, b) in diff.items()))


def build_trainer(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor,
                  index: dict[str, np.ndarray], hidden: tuple[int, ...], fe: FrontEnd,
                  dense: tuple[int, ...] = (), dense_shifts: tuple[int, ...] | None = None,
                  augment: FeatureAugment | None = None) -> Trainer:
    """Task, model and Trainer for ``args`` (resumed from ``--out`` with ``--resume``);
    ``augment`` defaults to the one the ``--aug-*`` flags describe."""
    set_seed(args.seed, deterministic=True)
    if augment is None:
        augment = augment_from_args(args)
    task = KWSTask(x, y, index, args.batch_size, args.seed, augment=augment)
    model = KWSNet(args.model, fe.n_features, hidden, 10, quant_bits=args.bits,
                   zero_rule=args.zero_rule, reset_gate=args.reset_gate,
                   logit_gain=args.logit_gain, dense_sizes=dense, dense_shifts=dense_shifts)
    spe = task.steps_per_epoch
    cfg = TrainConfig(max_steps=args.epochs * spe, lr=args.lr, clip=args.clip,
                      schedule="cosine", scale_lr_by_seq_len=False, eval_interval=spe,
                      log_interval=spe, seed=args.seed, out_dir=args.out, tensorboard=False,
                      progress=args.progress, select_by="error")
    run_config = _run_config(args, fe)
    trainer = Trainer(model, task, cfg, run_config=run_config)
    if args.resume:
        _check_resumable(Path(args.out), run_config)
        trainer.resume(args.out)
    return trainer


def level_fractions(deployed: Any) -> dict[str, float]:
    """Fraction of all deployed weights (recurrent, dense and readout layers) at each
    power-of-two level."""
    vals = np.concatenate([decode_pow2(c, deployed.bits).ravel()
                           for c in deployed.code_matrices()])
    levels, counts = np.unique(vals, return_counts=True)
    return {f"{v:g}": float(n / vals.size) for v, n in zip(levels, counts, strict=True)}


def _deployed_metrics(args: argparse.Namespace, model: KWSNet, x_test: np.ndarray,
                      y_test: np.ndarray, xt: torch.Tensor) -> tuple[Any, dict[str, Any]]:
    """The integer model and its test metrics (agreement with the float model, bytes)."""
    deployed = deploy(model, bits=args.bits)
    logits_i, _ = deployed.run(to_q15(x_test))
    pred_i = np.argmax(logits_i, axis=1)
    model.eval()
    with torch.no_grad():
        logits_f = model(xt)
    metrics = {"deployed_test_acc": float((pred_i == y_test).mean()),
               "deployed_agreement": float((pred_i == logits_f.argmax(1).numpy()).mean()),
               "deployed_bytes": deployed.model_bytes(),
               "deployed_level_fractions": level_fractions(deployed),
               "deployed_kind": "qat" if args.model == "egru-q" else "ptq", "bits": args.bits}
    if args.model == "egru-q":
        lf = (logits_f / model.logit_gain).numpy()
        metrics["max_logit_diff_float_vs_int"] = float(np.abs(logits_i / 32768 - lf).max())
    return deployed, metrics


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or resume), test and deploy one model; print a short report; return metrics.
    With ``--seeds``/``--splits``/``--models`` run the whole table (:mod:`.table`)."""
    if args.seeds or args.splits or args.models:
        return table.run_table(args, run)
    hidden, dense, shifts = _check_args(args)
    # the resolved shifts (not "auto") go into config.json, the checkpoints and metrics.json
    args = argparse.Namespace(**{**vars(args), "dense_shift": table.shift_text(shifts)})
    if not args.out:
        return _run(args, hidden, dense, shifts)
    with RunLock(args.out, "--out"):
        if getattr(args, "overwrite", False):
            clear_run(args.out, also=("config.json", "metrics.json"))
        return _run(args, hidden, dense, shifts)


def _run(args: argparse.Namespace, hidden: tuple[int, ...], dense: tuple[int, ...],
         shifts: tuple[int, ...]) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    t0 = time.time()
    fe = FrontEnd(features=args.features, gain=args.gain)
    aug = augment_from_args(args)
    if aug.freq_mask > fe.n_features or aug.time_mask > fe.n_frames:
        raise ValueError(f"--aug-freq-mask {aug.freq_mask} / --aug-time-mask {aug.time_mask} "
                         f"exceed the features' {fe.n_features} bins / {fe.n_frames} frames")
    data = load_fsdd(fe, data_dir=args.data)
    spk = tuple(s.strip() for s in args.test_speakers.split(",") if s.strip())
    idx = split_fsdd(data, args.split, test_speakers=spk)
    if args.max_train:
        idx["train"] = np.random.default_rng(args.seed).permutation(idx["train"])[
            : args.max_train]
    x = torch.from_numpy(data.x).transpose(0, 1).contiguous()  # (T, N, F)
    y = torch.from_numpy(data.y)
    trainer = build_trainer(args, x, y, idx, hidden, fe, dense, shifts, aug)
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.json", trainer.run_config)
    summary = trainer.fit()
    model, spe = trainer.model, trainer.task.steps_per_epoch
    best = None
    if out is not None and (out / "best.json").is_file():
        best = ckpt.load_weights(out, "best", model)
    test = trainer.task.evaluate(model, "test")
    history = [{"epoch": h["step"] // spe, "loss": h["valid_loss"],
                "val_acc": 1.0 - h["valid_error"]} for h in summary["history"]]
    metrics: dict[str, Any] = {
        "model": args.model, "split": args.split, "features": args.features,
        "hidden": list(hidden), "dense": list(dense), "dense_shift": list(shifts),
        "seed": args.seed, "epochs": args.epochs,
        "weights": "final" if best is None else "best",
        "best_epoch": None if best is None else best["step"] // spe,
        "val_acc": None if best is None else 1.0 - best["best_val"],
        "test_acc": test["accuracy"], "test_loss": test["loss"],
        "n_train": len(idx["train"]), "n_test": len(idx["test"]),
        "params": model.num_weights(), "float_bytes": 4 * model.num_weights(),
        "history": history,
    }
    if args.split == "speaker":
        metrics["test_speakers"] = list(spk)
    deployed = None
    if args.model in ("egru", "egru-q") and not args.reset_gate:
        deployed, dm = _deployed_metrics(args, model, data.x[idx["test"]], data.y[idx["test"]],
                                         x[:, idx["test"]])
        metrics.update(dm)
    metrics["seconds"] = round(time.time() - t0, 1)
    line = (f"[kws] {args.model} split={args.split} test_acc={metrics['test_acc']:.4f}"
            f" params={metrics['params']} float_bytes={metrics['float_bytes']}")
    if deployed is not None:
        line += (f" deployed_acc={metrics['deployed_test_acc']:.4f}"
                 f" deployed_bytes={metrics['deployed_bytes']}")
    print(line, flush=True)
    if out is not None:
        atomic_write_json(out / "metrics.json", metrics)
        if deployed is not None:
            emit_c(deployed, out / "c")
    return metrics


__all__ = ["MODELS", "add_arguments", "build_trainer", "run"]
