"""Shared pieces of the engine benchmarks: machine/load report, interleaved timing, models
with controlled weight density and activity, and the dense PyTorch baselines.

Used by ``benchmarks/bench_engine.py``, ``bench_engine_sweep.py`` and ``bench_block_shapes.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import numba
import numpy as np
import scipy
import torch
import torch.nn.functional as F
from torch import nn

from dualsparse.accounting import ActivityMeter
from dualsparse.data.corpora import load_corpus
from dualsparse.models.lm import RNNLanguageModel

#: Load average (1 min) above which timings are refused unless ``--allow-load``.
MAX_LOAD = 1.5
#: Clock of the timings: this thread's CPU time at 1 thread, wall time otherwise.
CLOCK = {"cpu": time.thread_time, "wall": time.perf_counter}

#: Model shapes: (vocab, embedding, hidden sizes).
PAPER_LM = (10000, 750, (1350, 1350, 750))
DEMO_LM = (10000, 128, (256, 128))
QUICK_LM = (300, 16, (32, 16))


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def machine() -> dict:
    """CPU model, logical CPUs, 1-min load average and library versions."""
    try:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines()
                      if ln.startswith("Model name")), platform.processor())
    except OSError:
        model = platform.processor()
    return {"cpu": model, "logical_cpus": os.cpu_count(), "load_1min": load_average(),
            "torch": torch.__version__, "numba": numba.__version__, "scipy": scipy.__version__,
            "numpy": np.__version__}


def check_load(allow: bool) -> str:
    """``""`` when the load is fine, else a mark for the results; raises ``SystemExit`` when
    the load exceeds :data:`MAX_LOAD` and ``allow`` is false."""
    load = load_average()
    if load <= MAX_LOAD:
        return ""
    msg = (f"load average {load:.2f} > {MAX_LOAD}: timings are not trustworthy on a busy "
           f"machine")
    if not allow:
        raise SystemExit(msg + " (rerun on an idle machine, or pass --allow-load to mark "
                         "the results LOADED)")
    print(f"# WARNING: {msg}; results are marked LOADED", flush=True)
    return "LOADED"


class Session:
    """Bookkeeping of one benchmark run: command, machine, load before and after, mark."""

    def __init__(self, script: str, argv: list[str] | None, allow_load: bool) -> None:
        args = sys.argv[1:] if argv is None else argv
        self.command = " ".join(["python", f"benchmarks/{script}", *args])
        self.mark = check_load(allow_load)
        self.load_before = load_average()
        self.load_after = float("nan")

    def payload(self, **results: object) -> dict:
        """The results file: the bookkeeping fields, then ``results`` in the given order."""
        head = {"command": self.command, "machine": machine(), "load_before": self.load_before,
                "load_after": self.load_after,
                "marked": self.mark or ("LOADED" if self.load_after > MAX_LOAD else "")}
        return {**head, **results}


@contextlib.contextmanager
def one_thread_session(script: str, argv: list[str] | None, allow_load: bool,
                       header: str = "") -> Iterator[Session]:
    """Refuse a loaded machine (unless ``allow_load``), print the command, machine and load,
    run the body at one torch and one numba thread (restored afterwards, also on error), then
    print and record the load after it."""
    session = Session(script, argv, allow_load)
    print(f"# {' '.join(sys.argv)}\n# {machine()}\n# load before {session.load_before:.2f} "
          f"{session.mark}" + (f"\n\n{header}" if header else ""), flush=True)
    saved = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    try:
        yield session
    finally:
        torch.set_num_threads(saved[0])
        numba.set_num_threads(saved[1])
    session.load_after = load_average()
    print(f"\n# load after {session.load_after:.2f}", flush=True)


def interleaved(fns: dict[str, Callable[[], None]], repeats: int, clock: str,
                warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, the functions alternating within every repeat."""
    now = CLOCK[clock]
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = now()
            fn()
            times[k].append(now() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def make_weight(rows: int, cols: int, density: float, pattern: str,
                rng: np.random.Generator, scale: float | None = None) -> np.ndarray:
    """Random float32 matrix with ``density`` nonzeros: ``"unstructured"`` (smallest
    magnitudes zeroed), ``"16x1"`` (whole 16-row blocks of a column zeroed) or dense."""
    w = (rng.standard_normal((rows, cols)) * (scale or 1 / np.sqrt(cols))).astype(np.float32)
    if density >= 1.0:
        return w
    if pattern == "unstructured":
        cut = np.quantile(np.abs(w), 1.0 - density)
        w[np.abs(w) < cut] = 0.0
        return w
    nbr = -(-rows // 16)
    keep = rng.random((nbr, cols)) < density
    return w * np.repeat(keep, 16, axis=0)[:rows]


def make_lm(shape: tuple, cell: str, d_w: float, pattern: str, seed: int) -> RNNLanguageModel:
    """A random LM of ``shape`` (tied when sizes allow) whose input and recurrent weights are
    pruned to ``d_w`` (``pattern`` as :func:`make_weight`); the decoder stays dense."""
    vocab, emb, hidden = shape
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opts = {"threshold_mean": 0.1} if cell == "egru" else None
    lm = RNNLanguageModel(vocab, emb, list(hidden), cell=cell, cell_options=opts).eval()
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if ".weight_ih_l" in name or ".weight_hh_l" in name:
                # scaled up by 1/sqrt(d_w) so that pruning keeps the pre-activation scale
                scale = 1.0 / np.sqrt(p.shape[1] * max(d_w, 1e-3))
                p.copy_(torch.from_numpy(make_weight(*p.shape, d_w, pattern, rng, scale)))
    return lm


def calibrate_activity(lm: RNNLanguageModel, tokens: torch.Tensor, target: float,
                       rounds: int = 4) -> float:
    """Set per-unit EGRU thresholds, layer by layer, so that about ``target`` of the units
    fire on ``tokens`` ``(T, 1)``; returns the measured activity (mean over layers).

    Each round sets the thresholds to the ``1 - q`` quantile of ``c~`` per unit and corrects
    ``q`` by the ratio of target to measured activity (the reset lowers ``c~`` after events,
    so a plain quantile undershoots)."""
    for k, rnn in enumerate(lm.rnns):
        q = target
        for _ in range(rounds):
            with torch.no_grad():
                _, _, seqs = lm(tokens, return_sequences=True)
            internal = seqs.layers[k].internal.reshape(-1, rnn.hidden_sizes[0])
            theta = torch.quantile(internal, 1.0 - min(q, 0.95), dim=0).clamp(0.01, 5.0)
            rnn.set_threshold(0, theta)
            with torch.no_grad():
                _, _, seqs = lm(tokens, return_sequences=True)
            got = float((seqs.layers[k].output != 0).float().mean())
            q = q * target / max(got, 1e-3)
    with torch.no_grad():
        _, _, seqs = lm(tokens, return_sequences=True)
    return float(np.mean([float((s.output != 0).float().mean()) for s in seqs.layers]))


def ideal_speedup(lm: RNNLanguageModel, tokens: torch.Tensor) -> tuple[float, float]:
    """``(dense MACs / effective MACs, activity)`` on ``tokens`` ``(T, B)``, decoder included
    (counted by :class:`dualsparse.accounting.ActivityMeter`); activity = nonzero fraction of
    all layer outputs."""
    meter = ActivityMeter()
    nonzero = units = 0.0
    with torch.no_grad():
        state = None
        for s in range(0, tokens.shape[0], 64):
            _, state, seqs = lm(tokens[s:s + 64], state, return_sequences=True)
            for k, rnn in enumerate(lm.rnns):
                w_ih, w_hh, _, _ = rnn.layer_weights(0)
                meter.update_layer(k, w_ih, w_hh, seqs.layer_inputs[k], seqs.layers[k])
            meter.update_decoder(seqs.decoder_input, lm.decoder.weight)
            nonzero += sum(float((q.output != 0).sum()) for q in seqs.layers)
            units += sum(q.output.numel() for q in seqs.layers)
    rep = meter.report()
    return rep.total_dense_macs / max(rep.total_effective_macs, 1e-12), nonzero / units


class DenseTwin:
    """The dense PyTorch baseline of an LM: ``torch.nn.GRU``/``LSTM`` layers (oneDNN) of the
    same sizes and dense weights, embedding lookup and ``F.linear`` decoder.

    ``segment(ids)``: ``(T, B)`` ids in one call per layer; ``stream(ids)``: one token per
    call through ``nn.GRUCell``/``nn.LSTMCell``.
    """

    def __init__(self, lm: RNNLanguageModel) -> None:
        rnn_cls = nn.LSTM if lm.cell == "lstm" else nn.GRU
        cell_cls = nn.LSTMCell if lm.cell == "lstm" else nn.GRUCell
        sizes = (lm.emb_size, *lm.hidden_sizes)
        self.rnns = [rnn_cls(i, h).eval() for i, h in zip(sizes[:-1], sizes[1:], strict=True)]
        self.cells = [cell_cls(i, h).eval() for i, h in zip(sizes[:-1], sizes[1:], strict=True)]
        self.lstm = lm.cell == "lstm"
        self.emb = lm.embedding.weight.detach().clone()
        self.dec_w = lm.decoder.weight.detach().clone()
        self.dec_b = lm.decoder.bias.detach().clone()

    @torch.no_grad()
    def segment(self, ids: torch.Tensor, states: list | None = None) -> list:
        states = states or [None] * len(self.rnns)
        x = F.embedding(ids, self.emb)
        for k, rnn in enumerate(self.rnns):
            x, states[k] = rnn(x, states[k])
        F.linear(x, self.dec_w, self.dec_b)
        return states

    @torch.no_grad()
    def stream(self, ids: torch.Tensor) -> None:
        batch = ids.shape[1]
        hs = [torch.zeros(batch, c.hidden_size) for c in self.cells]
        cs = [torch.zeros(batch, c.hidden_size) for c in self.cells]
        for t in range(ids.shape[0]):
            x = F.embedding(ids[t], self.emb)
            for k, cell in enumerate(self.cells):
                if self.lstm:
                    hs[k], cs[k] = cell(x, (hs[k], cs[k]))
                else:
                    hs[k] = cell(x, hs[k])
                x = hs[k]
            F.linear(x, self.dec_w, self.dec_b)


def ptb_tokens(n: int, vocab: int, seed: int) -> tuple[torch.Tensor, str]:
    """``n`` PTB test tokens (ids folded into ``vocab``) when ``$DUALSPARSE_DATA`` has PTB,
    else random ids; and the source's name."""
    try:
        test = load_corpus("ptb", download=False).test[:n]
        return test % vocab, "ptb-test"
    except (OSError, ValueError, KeyError):
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, vocab, (n,), generator=g), "random"


def add_session_args(p: argparse.ArgumentParser) -> None:
    """The flags every engine benchmark shares: ``--seed``, ``--allow-load``, ``--out``."""
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-load", action="store_true",
                   help="run even when the load average exceeds 1.5 (results marked LOADED)")
    p.add_argument("--out", default=None, help="write the results to this new JSON file")


def write_json(path: str, payload: dict) -> None:
    """Write ``payload`` to a new file (atomic rename); an existing file is never
    overwritten."""
    if os.path.exists(path):
        raise FileExistsError(f"--out {path} exists; choose a new name")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1)
    os.chmod(tmp, 0o644)
    os.link(tmp, path)  # fails if path appeared meanwhile
    os.unlink(tmp)


@numba.njit(parallel=True, fastmath=True, cache=True)
def _read_sum(buf: np.ndarray, chunks: int) -> float:
    """Sum of ``buf`` in ``chunks`` contiguous parts, one ``prange`` iteration each: a
    read-only sweep, vectorised (fastmath lets LLVM reorder the sum)."""
    n = buf.size
    step = -(-n // chunks)
    part = np.zeros(chunks, np.float64)
    for c in numba.prange(chunks):
        s = np.float32(0.0)
        for i in range(c * step, min(n, (c + 1) * step)):
            s += buf[i]
        part[c] = s
    return part.sum()


def _one_vs_two_threads(run: Callable[[int], None], repeats: int) -> dict[str, float]:
    """``run(threads)`` at 1 and 2 threads, alternating, wall-time medians (thread count
    back at 1 afterwards): microseconds each and the 2-thread speed-up."""
    t = interleaved({"t1": lambda: run(1), "t2": lambda: run(2)}, repeats, "wall")
    numba.set_num_threads(1)
    torch.set_num_threads(1)
    return {"t1_us": t["t1"] * 1e6, "t2_us": t["t2"] * 1e6, "speedup": t["t1"] / t["t2"]}


def read_bandwidth(nbytes: int, repeats: int, seed: int = 0) -> dict[str, float]:
    """Read-only sweep of ``nbytes`` of float32 with 1 and 2 threads (numba), alternating,
    wall-time medians: GB/s each and their ratio, the 2-thread speed-up any kernel that
    streams that many bytes once can reach on this machine."""
    buf = np.random.default_rng(seed).standard_normal(nbytes // 4).astype(np.float32)

    def sweep(threads: int) -> None:
        numba.set_num_threads(threads)
        _read_sum(buf, 2)

    r = _one_vs_two_threads(sweep, repeats)
    return {**r, "gbs1": buf.nbytes / r["t1_us"] / 1e3, "gbs2": buf.nbytes / r["t2_us"] / 1e3}


def torch_mv_threads(w: np.ndarray, x: np.ndarray, repeats: int) -> dict[str, float]:
    """``torch.mv`` through ``w`` (rows, cols) with 1 and 2 torch threads, alternating,
    wall-time medians: PyTorch's own 2-thread scaling of the same single-vector product."""
    wt, xt = torch.from_numpy(w), torch.from_numpy(x)

    def mv(threads: int) -> None:
        torch.set_num_threads(threads)
        torch.mv(wt, xt)

    return _one_vs_two_threads(mv, repeats)
