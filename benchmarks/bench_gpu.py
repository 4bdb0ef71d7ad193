"""GPU benchmarks of issue 17, written as one JSON report (run by ``scripts/gpu-check.sh``).

Sections (each timed with CUDA events, median of ``--repeats`` after warm-up):

* ``device``: GPU model, driver, CUDA, torch and triton versions.
* ``layer``: one recurrent layer fwd+bwd at the paper size (batch 64, bptt 70, hidden 1350):
  cuDNN ``nn.GRU`` against ``EGRU`` with the PyTorch fused BPTT and with the Triton kernels
  (a few tile configurations); target: Triton EGRU tokens/s >= 0.8 x cuDNN.
* ``sparse_backward``: Triton layer backward time, sparse vs dense, against the measured
  backward sparsity (units silenced as in ``bench_sparse_backward.py``); target: speed-up
  >= 0.5 / (1 - sparsity) where sparsity >= 0.5.
* ``inference``: batch-1 event-driven matvec and fused EGRU step (1350 units) against cuBLAS
  GEMV (+ the PyTorch step) over activities; target: faster than cuBLAS at activity <= 20%.
* ``ptb_egru``: seconds per training step of the ``ptb-egru`` preset model (PTB if found under
  ``$DUALSPARSE_DATA``, else a synthetic corpus of PTB's size), seconds per epoch and the
  projected 1000-epoch time, for the torch and the triton EGRU backends.

    python benchmarks/bench_gpu.py --out gpu-report.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dualsparse.models import EGRU
from dualsparse.models.egru_fused import needed_units
from dualsparse.models.triton_egru import Blocks, triton_egru_sequence

BLOCK_CONFIGS = [Blocks(16, 32, 32, 4), Blocks(16, 64, 32, 4), Blocks(32, 32, 32, 4),
                 Blocks(16, 32, 64, 4), Blocks(64, 64, 32, 8)]
CUBLAS_CONFIGS = [Blocks(16, 16, 16, 2), Blocks(16, 32, 32, 4), Blocks(16, 64, 32, 4)]
"""Tiles of the gate-derivative kernel tried with ``backward_matmul="cublas"`` (its ``k`` is
unused)."""


def device_info() -> dict[str, Any]:
    """GPU model and driver (nvidia-smi), CUDA/torch/triton versions."""
    info: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0),
                            "capability": list(torch.cuda.get_device_capability(0)),
                            "cuda": torch.version.cuda, "torch": torch.__version__,
                            "python": platform.python_version()}
    try:
        import triton  # optional dependency, only for the report
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30, check=True).stdout.strip().splitlines()[0]
        name, driver, memory = (s.strip() for s in smi.split(","))
        info.update(nvidia_smi_name=name, driver=driver, memory=memory)
    except (OSError, subprocess.SubprocessError, IndexError, ValueError) as exc:
        info["driver"] = f"unknown ({exc.__class__.__name__})"
    return info


def cuda_time(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> float:
    """Median seconds of ``fn()`` measured with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def bench_layer(batch: int, steps: int, hidden: int, inp: int, repeats: int,
                configs: list[Blocks]) -> dict[str, Any]:
    """fwd+bwd tokens/s of cuDNN GRU, EGRU (torch fused) and EGRU (triton, per config)."""
    torch.manual_seed(0)
    x = torch.randn(steps, batch, inp, device="cuda")
    tokens = steps * batch

    def run(module: torch.nn.Module) -> Callable[[], None]:
        def step() -> None:
            module.zero_grad(set_to_none=True)
            module(x)[0].sum().backward()
        return step

    gru = torch.nn.GRU(inp, hidden).cuda()
    egru = EGRU(inp, hidden, threshold_mean=0.3, backend="torch").cuda()  # "auto" = triton
    res: dict[str, Any] = {"batch": batch, "bptt": steps, "hidden": hidden, "input": inp}
    res["cudnn_gru_tok_s"] = tokens / cuda_time(run(gru), repeats)
    res["egru_torch_tok_s"] = tokens / cuda_time(run(egru), repeats)
    z = x.new_zeros(batch, hidden)
    res["triton"] = []
    runs = [(b, "fused") for b in configs] + [(b, "cublas") for b in CUBLAS_CONFIGS]
    for blocks, method in runs:
        def step(blocks: Blocks = blocks, method: str = method) -> None:
            egru.zero_grad(set_to_none=True)
            gi_ = torch.nn.functional.linear(x, egru.weight_ih_l0, egru.bias_ih_l0)
            ys = triton_egru_sequence(gi_, z, z, egru.weight_hh_l0, egru.bias_hh_l0,
                                      egru.threshold(0), None, egru.surrogate, egru.reset_mode,
                                      blocks=blocks, backward_matmul=method)[0]
            ys.sum().backward()
        entry = {"blocks": vars(blocks), "backward_matmul": method}
        try:
            entry["tok_s"] = tokens / cuda_time(step, repeats)
        except Exception as exc:  # a tile configuration the GPU cannot compile: report it
            entry["error"] = repr(exc)[:300]
        res["triton"].append(entry)
    ok = [r for r in res["triton"] if "tok_s" in r]
    best = max((r for r in ok if r["backward_matmul"] == "fused"), key=lambda r: r["tok_s"],
               default=None)
    res["egru_triton_best"] = best  # the tiles for the other sections: the fused kernels'
    res["egru_triton_best_any"] = max(ok, key=lambda r: r["tok_s"]) if ok else None
    res["ratio_triton_to_cudnn"] = (res["egru_triton_best_any"]["tok_s"] / res["cudnn_gru_tok_s"]
                                    if ok else None)
    res["target_ratio"] = 0.8
    return res


def silenced_layer(frac: float, batch: int, steps: int, hidden: int, inp: int,
                   device: str = "cuda") -> tuple:
    """Arguments of :func:`triton_egru_sequence` for one EGRU layer (seed 0) whose first
    ``round(frac * hidden)`` units are silenced (input bias -40 on z and g: z ~ 0, g ~ -1,
    outside the surrogate support); ``gi`` and ``w_hh`` require grad."""
    torch.manual_seed(0)
    m = EGRU(inp, hidden, threshold_mean=0.3).to(device)
    n = int(round(frac * hidden))
    with torch.no_grad():
        m.bias_ih_l0[hidden:hidden + n] = -40.0
        m.bias_ih_l0[2 * hidden:2 * hidden + n] = -40.0
    x = torch.randn(steps, batch, inp, device=device)
    gi = torch.nn.functional.linear(x, m.weight_ih_l0, m.bias_ih_l0).detach()
    gi.requires_grad_(True)
    z = x.new_zeros(batch, hidden)
    theta = m.threshold(0).detach()
    w = m.weight_hh_l0.detach().requires_grad_(True)
    return (gi, z, z, w, None, theta, None, m.surrogate, m.reset_mode)


def backward_sparsity(call: tuple, **kw: Any) -> float:
    """One minus the fraction of (step, row, unit) that the backward pass of ``call`` needs."""
    outs = triton_egru_sequence(*call, **kw)
    theta, surrogate = call[5], call[7]
    return 1.0 - needed_units(outs[1], outs[2], theta, surrogate).float().mean().item()


def backward_seconds(call: tuple, repeats: int, **kw: Any) -> float:
    """Median seconds (CUDA events) of the backward pass of ``triton_egru_sequence(*call)``
    over ``repeats`` runs after two warm-ups; each run does a fresh forward first."""
    times = []
    for i in range(repeats + 2):
        loss = triton_egru_sequence(*call, **kw)[0].sum()
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        loss.backward()
        end.record()
        end.synchronize()
        if i >= 2:
            times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def bench_sparse_backward(batch: int, steps: int, hidden: int, inp: int, repeats: int,
                          blocks: Blocks, fractions: list[float]) -> list[dict[str, Any]]:
    """Triton backward time, sparse vs dense, against the measured backward sparsity."""
    rows = []
    for frac in fractions:
        call = silenced_layer(frac, batch, steps, hidden, inp)
        row: dict[str, Any] = {"silenced": frac}
        for sparse in (False, True):
            stats: dict = {}
            kw = {"sparse_backward": sparse, "blocks": blocks, "stats": stats}
            if sparse:
                row["backward_sparsity"] = backward_sparsity(call, **kw)
            row["sparse_s" if sparse else "dense_s"] = backward_seconds(call, repeats, **kw)
            if sparse:
                row["skipped_tiles"] = stats.get("skipped_tiles")
                row["path"] = stats.get("path")
        row["speedup"] = row["dense_s"] / row["sparse_s"]
        s = row["backward_sparsity"]
        row["target_speedup"] = 0.5 / max(1.0 - s, 1e-9) if s >= 0.5 else None
        rows.append(row)
    return rows


EVENT_BLOCKS = [(16, 32), (16, 128), (32, 64), (8, 128)]
"""(block_n, block_k) configurations of the event kernels tried in ``bench_inference``."""


def bench_inference(hidden: int, repeats: int, activities: list[float]) -> list[dict[str, Any]]:
    """Batch-1: event matvec and fused event step (best of EVENT_BLOCKS) vs cuBLAS GEMV and
    the PyTorch step."""
    from dualsparse.engine import triton_events
    from dualsparse.models.egru import egru_step

    torch.manual_seed(0)
    m = EGRU(hidden, hidden, threshold_mean=0.3).cuda().eval()
    w = m.weight_hh_l0.detach().contiguous()
    w_t = w.t().contiguous()
    b = m.bias_hh_l0.detach()
    theta = m.threshold(0).detach()
    gi = torch.randn(3 * hidden, device="cuda")
    c = torch.randn(hidden, device="cuda")
    n = repeats * 20
    rows = []
    for act in activities:
        y = torch.randn(hidden, device="cuda").abs() * (torch.rand(hidden, device="cuda") < act)
        with torch.no_grad():
            row: dict[str, Any] = {
                "activity": act,
                "cublas_gemv_s": cuda_time(lambda y=y: torch.addmv(b, w, y), n),
                "torch_step_s": cuda_time(lambda y=y: egru_step(gi[None], y[None], c[None], w,
                                                                b, theta, m.surrogate), n),
                "configs": []}
            for bn, bk in EVENT_BLOCKS:
                row["configs"].append({
                    "block_n": bn, "block_k": bk,
                    "event_matvec_s": cuda_time(
                        lambda y=y, bn=bn, bk=bk: triton_events.event_matvec(y, w_t, b, bn, bk),
                        n),
                    "event_step_s": cuda_time(
                        lambda y=y, bn=bn, bk=bk: triton_events.egru_event_step(
                            gi, y, c, w_t, b, theta, block_n=bn, block_k=bk), n)})
        row["event_matvec_s"] = min(r["event_matvec_s"] for r in row["configs"])
        row["event_step_s"] = min(r["event_step_s"] for r in row["configs"])
        row["matvec_speedup"] = row["cublas_gemv_s"] / row["event_matvec_s"]
        row["step_speedup"] = row["torch_step_s"] / row["event_step_s"]
        rows.append(row)
    return rows


def ptb_corpus() -> tuple[torch.Tensor, int, str]:
    """PTB train tokens and vocabulary size, or a synthetic stream of PTB's size."""
    try:
        from dualsparse.data.corpora import load_corpus
        corpus = load_corpus("ptb", os.environ.get("DUALSPARSE_DATA"))
        return corpus.train, len(corpus.vocab), "ptb"
    except (OSError, ValueError) as exc:
        g = torch.Generator().manual_seed(0)
        return (torch.randint(0, 10000, (929589,), generator=g), 10000,
                f"synthetic (PTB size; {exc.__class__.__name__})")


def bench_ptb_egru(steps: int, backends: list[str]) -> dict[str, Any]:
    """Seconds per step / epoch of the ptb-egru preset model on the GPU, per EGRU backend."""
    from dualsparse.apps.lm.presets import get_preset
    from dualsparse.apps.lm.task import LMTask
    from dualsparse.models.lm import RNNLanguageModel
    from dualsparse.train.loop import TrainConfig, Trainer, set_seed

    p = get_preset("ptb-egru")
    train, vocab, source = ptb_corpus()
    emb, hidden = p["emb_size"], p["hidden_sizes"]
    options = {"surrogate_gamma": p["surrogate_gamma"], "surrogate_width": p["surrogate_width"],
               "threshold_mean": p["threshold_mean"]}
    if "threshold_parameterisation" in p:
        options["threshold_parameterisation"] = p["threshold_parameterisation"]
    res: dict[str, Any] = {"data": source, "epochs": p["epochs"], "batch_size": p["batch_size"],
                           "bptt": p["bptt"], "hidden_sizes": hidden, "emb_size": emb}
    for backend in backends:
        set_seed(p["seed"], deterministic=False)
        model = RNNLanguageModel(
            vocab, emb, hidden, cell="egru", dropout=p["dropout"], dropouth=p["dropouth"],
            dropouti=p["dropouti"], dropoute=p["dropoute"],
            wdrop=p["dropconnect"], cell_options=options).cuda()
        for rnn in model.rnns:
            rnn.backend = backend
        task = LMTask(train, train[:1000], train[:1000], batch_size=p["batch_size"],
                      bptt=p["bptt"], random_bptt=True, seed=p["seed"], carry=p["carry"],
                      device="cuda")
        cfg = TrainConfig(max_steps=10 ** 9, lr=p["lr"], beta1=p["beta1"], beta2=p["beta2"],
                          wdecay=p["wdecay"], wdecay_bias=p.get("wdecay_bias", 0.0),
                          clip=p["clip"], lr_thr=p["lr_thr"], deterministic=False,
                          tensorboard=False, progress=False)
        trainer = Trainer(model, task, cfg)
        try:
            for _ in range(3):
                trainer.train_step()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                trainer.train_step()
            torch.cuda.synchronize()
            per_step = (time.perf_counter() - t0) / steps
        except Exception as exc:  # report a failing backend, keep the others
            res[backend] = {"error": repr(exc)[:300]}
            continue
        per_epoch = per_step * task.steps_per_epoch
        res[backend] = {"s_per_step": per_step, "steps_per_epoch": task.steps_per_epoch,
                        "s_per_epoch": per_epoch,
                        "projected_1000_epochs_h": per_epoch * 1000 / 3600,
                        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30}
        del trainer, model
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON report path (must not exist)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="fewer configs and steps")
    p.add_argument("--tf32", action="store_true",
                   help="allow TF32 in cuBLAS/cuDNN and the Triton kernels (default: IEEE fp32)")
    p.add_argument("--sections", default="layer,sparse_backward,inference,ptb_egru")
    args = p.parse_args()
    out = Path(args.out)
    if out.exists():
        raise ValueError(f"--out {out} exists; refusing to overwrite a result")
    if not torch.cuda.is_available():
        raise ValueError("bench_gpu.py needs CUDA (no GPU visible)")
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    sections = set(args.sections.split(","))
    report: dict[str, Any] = {"device": device_info(), "tf32": args.tf32,
                              "repeats": args.repeats, "quick": args.quick}
    configs = BLOCK_CONFIGS[:2] if args.quick else BLOCK_CONFIGS

    def section(name: str, fn: Callable[[], Any]) -> None:
        if name not in sections:
            return
        t0 = time.perf_counter()
        try:
            report[name] = fn()
        except Exception as exc:  # one broken section must not lose the others
            report[name] = {"error": repr(exc)[:500]}
        report.setdefault("section_seconds", {})[name] = time.perf_counter() - t0
        print(f"[bench_gpu] {name}: {json.dumps(report[name])[:2000]}", flush=True)
        out.write_text(json.dumps(report, indent=2))

    section("layer", lambda: bench_layer(64, 70, 1350, 750, args.repeats, configs))
    best = report.get("layer", {}).get("egru_triton_best") if "layer" in report else None
    blocks = Blocks(**best["blocks"]) if isinstance(best, dict) else Blocks()
    section("sparse_backward", lambda: bench_sparse_backward(
        64, 70, 1350, 750, args.repeats, blocks,
        [0.0, 0.5, 0.8, 0.9] if args.quick else [0.0, 0.25, 0.5, 0.75, 0.8, 0.9, 0.95]))
    section("inference", lambda: bench_inference(
        1350, args.repeats, [0.05, 0.1, 0.2, 0.5, 1.0]))
    section("ptb_egru", lambda: bench_ptb_egru(5 if args.quick else 20, ["torch", "triton"]))
    out.write_text(json.dumps(report, indent=2))
    print(f"[bench_gpu] report written to {out}")


if __name__ == "__main__":
    main()
