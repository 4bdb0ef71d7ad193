"""Language-model runs on one GPU inside a fixed time budget (issue 12, section 5).

Trains the small presets to the end (``ptb-small-lstm``, ``ptb-small-egru``: test perplexity
at batch 1 from ``dualsparse train``), then the paper preset ``ptb-egru`` for as many epochs
as the rest of the budget allows. ``ptb-egru``'s learning rate is constant until its cosine
starts at epoch 700, so ``--epochs N`` trains exactly the recipe's first ``N`` epochs; its
test perplexity (batch 1) is that of the best of them. Optional steps before the runs: the
CUDA model tests (``--tests``) and ``benchmarks/bench_rnn_fused.py`` (``--bench``).

A run that ends without its test (cut by its limit, or failed after training) has its best
checkpoint tested by ``dualsparse eval`` in the time left. Every run writes its folder under
``OUT`` (``metrics.csv``, ``results.json``, the log;
checkpoints too, left out of the archive); after each step ``OUT/summary.json`` (tokens/s,
seconds per epoch, projected time of the recipe's epochs, perplexities, activity) and
``OUT/runs.tar.gz`` (everything but checkpoints) are rewritten, so a cut run still reports
what it finished::

    DUALSPARSE_DATA=/path/to/data python scripts/gpu_lm_runs.py --out gpu-lm --budget 560 \\
        --tests --bench
    python scripts/gpu_lm_runs.py --out smoke --device cpu --budget 240 \\
        --extra "--train-tokens 20000 --valid-tokens 4000 --test-tokens 2000"   # a smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECIPE_EPOCHS = {"ptb-small-lstm": 13, "ptb-small-egru": 5, "ptb-egru": 1000}


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def run_summary(run_dir: Path, preset: str, seconds: float, rc: int | None) -> dict[str, Any]:
    """Speed and quality of one training run from its ``metrics.csv`` and ``results.json``."""
    rows = _rows(run_dir / "metrics.csv")
    train = [r for r in rows if r["split"] == "train"]
    valid = [r for r in rows if r["split"] == "valid"]
    out: dict[str, Any] = {"preset": preset, "returncode": rc, "wall_seconds": round(seconds, 1)}
    if train:
        last = train[-1]
        out.update(steps=int(last["step"]), train_loop_seconds=round(float(last["elapsed_s"]), 1),
                   tokens_per_s_with_evaluation=round(float(last["tokens_per_s"])))
        # training alone: consecutive train rows with no evaluation between them
        rates, prev, evaluated = [], None, False
        for r in rows:
            if r["split"] == "valid":
                evaluated = True
                continue
            t, e = float(r["tokens_per_s"]) * float(r["elapsed_s"]), float(r["elapsed_s"])
            if prev is not None and not evaluated and e > prev[1]:
                rates.append((t - prev[0]) / (e - prev[1]))
            prev, evaluated = (t, e), False
        if rates:
            rates.sort()
            out["tokens_per_s_training"] = round(rates[len(rates) // 2])
        if valid:  # the presets validate once per epoch
            per_epoch = float(valid[-1]["elapsed_s"]) / len(valid)
            out.update(epochs_completed=len(valid), seconds_per_epoch=round(per_epoch, 2))
            recipe = RECIPE_EPOCHS.get(preset)
            if recipe:
                out["recipe_epochs"] = recipe
                out["projected_recipe_hours"] = round(per_epoch * recipe / 3600, 2)
            best = min(valid, key=lambda r: float(r["loss"]))
            out.update(best_valid_ppl=round(float(best["ppl"]), 2),
                       valid_ppl_by_epoch=[round(float(r["ppl"]), 2) for r in valid],
                       valid_activity=None if not best["activity"] else float(best["activity"]))
    res_path = run_dir / "results.json"
    if res_path.exists():
        res = json.loads(res_path.read_text())
        test = res.get("test") or {}
        out.update(parameters=res.get("parameters"), test_ppl=test.get("ppl"),
                   test_batch_size=test.get("batch_size"), test_seconds=test.get("seconds"),
                   test_weights=test.get("weights"))
        acc = test.get("accounting") or {}
        layers = acc.get("layers") or []
        if layers:
            out["test_activity_sparsity"] = [round(1 - lay["activity"], 4) for lay in layers
                                             if lay.get("activity") is not None]
    return out


def environment() -> dict[str, Any]:
    """Versions and settings; with CUDA, ``benchmarks/bench_gpu.py``'s device report (GPU,
    driver, memory, triton)."""
    import torch  # noqa: PLC0415 (only here: the summary of a finished run needs no torch)

    env: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__,
                           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                           "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                           "tf32_cudnn": torch.backends.cudnn.allow_tf32}
    if torch.cuda.is_available():
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from bench_gpu import device_info  # noqa: PLC0415 (a benchmark script, CUDA only)

        env.update(device_info())
    return env


class Driver:
    """Runs the steps in order, each inside what is left of the budget."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.out = args, Path(args.out)
        self.t0 = time.monotonic()
        self.summary: dict[str, Any] = {"budget_seconds": args.budget, "device": args.device,
                                        "extra_flags": args.extra, "steps": {}}

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.t0)

    def call(self, name: str, cmd: list[str], limit: float) -> tuple[int | None, float]:
        """Run ``cmd`` with output to ``OUT/<name>.log``; killed after ``limit`` seconds."""
        print(f"[{time.monotonic() - self.t0:6.0f} s] {name}: {shlex.join(cmd)} "
              f"(limit {limit:.0f} s)", flush=True)
        t = time.monotonic()
        with (self.out / f"{name}.log").open("w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            try:
                rc: int | None = proc.wait(timeout=max(limit, 1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rc = None
        took = time.monotonic() - t
        print(f"[{time.monotonic() - self.t0:6.0f} s] {name}: rc {rc} after {took:.0f} s",
              flush=True)
        return rc, took

    def train(self, preset: str, limit: float, extra: list[str]) -> None:
        cmd = [sys.executable, "-m", "dualsparse", "train", "--preset", preset, "--device",
               self.args.device, "--save", str(self.out / preset), "--no-progress",
               *shlex.split(self.args.extra), *extra]
        rc, took = self.call(preset, cmd, limit)
        run_dir = self.out / preset
        summary = run_summary(run_dir, preset, took, rc)
        self.summary["steps"][preset] = summary
        self.write()
        if summary.get("test_ppl") is None and (run_dir / "best.json").is_file() \
                and self.left() > 20:
            # training ended (or was cut) without its test: test the best checkpoint
            out = run_dir / "eval-best-test.json"
            rc, took = self.call(f"{preset}-eval", [
                sys.executable, "-m", "dualsparse", "eval", "--checkpoint", str(run_dir),
                "--split", "test", "--batch-size", "1", "--device", self.args.device,
                "--out", str(out)], min(self.args.eval_limit, self.left() - 5))
            if out.is_file():
                res = json.loads(out.read_text())
                summary.update(test_ppl=res["ppl"], test_batch_size=1, test_seconds=took,
                               test_weights=f"best (step {res['step']}), dualsparse eval")
            else:
                summary["test_eval_returncode"] = rc
            self.write()

    def write(self) -> None:
        self.summary["elapsed_seconds"] = round(time.monotonic() - self.t0, 1)
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=2))
        tmp = self.out / "runs.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            for path in sorted(self.out.rglob("*")):
                if path.is_file() and path.suffix in {".csv", ".json", ".log", ".txt"}:
                    tar.add(path, arcname=str(path.relative_to(self.out)))
        tmp.replace(self.out / "runs.tar.gz")
        if self.args.mirror:  # e.g. a folder that is copied back even if this is cut
            for name in ("summary.json", "runs.tar.gz"):
                shutil.copyfile(self.out / name, Path(self.args.mirror) / name)

    def main(self) -> None:
        a = self.args
        self.summary["environment"] = environment()
        self.write()
        py = sys.executable
        if a.tests:
            rc, took = self.call("tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                           "tests/gpu/test_cuda_models.py", "-k",
                                           "lstm or gru or cudnn"],
                                 min(a.tests_limit, self.left()))
            self.summary["steps"]["tests"] = {"returncode": rc, "seconds": round(took, 1)}
            self.write()
        if a.bench:
            out = self.out / "bench-rnn-fused.json"
            rc, took = self.call("bench-rnn-fused",
                                 [py, "benchmarks/bench_rnn_fused.py", "--device", a.device,
                                  "--repeats", "3", "--out", str(out)],
                                 min(a.bench_limit, self.left()))
            self.summary["steps"]["bench-rnn-fused"] = {"returncode": rc,
                                                        "seconds": round(took, 1)}
            self.write()
        for preset in a.presets.split(","):
            limit = min(a.small_limit, self.left() - a.paper_minimum)
            if limit < 30:
                self.summary["steps"][preset] = {"skipped": f"{self.left():.0f} s left"}
                continue
            self.train(preset, limit, [])
        if a.paper:
            spare = self.left() - a.paper_reserve
            epochs = math.floor(spare / a.paper_epoch_seconds)
            if epochs < 1:
                self.summary["steps"][a.paper] = {"skipped": f"{self.left():.0f} s left"}
            else:
                self.summary["paper_epochs_planned"] = epochs
                self.train(a.paper, self.left() - 5, ["--epochs", str(epochs)])
        self.write()
        print(json.dumps(self.summary["steps"], indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (must not exist)")
    ap.add_argument("--budget", type=float, default=560.0, help="seconds for everything")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--presets", default="ptb-small-lstm,ptb-small-egru")
    ap.add_argument("--paper", default="ptb-egru", help="'' skips the paper preset")
    ap.add_argument("--small-limit", type=float, default=240.0,
                    help="seconds at most for each small preset")
    ap.add_argument("--paper-minimum", type=float, default=130.0,
                    help="seconds kept for the paper preset while the small ones run")
    ap.add_argument("--paper-epoch-seconds", type=float, default=18.0,
                    help="estimated seconds per paper epoch (training + validation + saving)")
    ap.add_argument("--paper-reserve", type=float, default=90.0,
                    help="seconds kept for the paper run's start-up and batch-1 test")
    ap.add_argument("--eval-limit", type=float, default=90.0,
                    help="seconds at most for testing a run's best checkpoint with "
                         "'dualsparse eval' when its training ended without a test")
    ap.add_argument("--extra", default="", help="flags added to every train command")
    ap.add_argument("--mirror", default=None,
                    help="existing folder that receives summary.json and runs.tar.gz after "
                         "every step")
    ap.add_argument("--tests", action="store_true",
                    help="run the GRU/LSTM tests of tests/gpu/test_cuda_models.py")
    ap.add_argument("--tests-limit", type=float, default=90.0)
    ap.add_argument("--bench", action="store_true", help="run benchmarks/bench_rnn_fused.py")
    ap.add_argument("--bench-limit", type=float, default=45.0)
    args = ap.parse_args()
    if os.path.exists(args.out):
        raise SystemExit(f"--out {args.out} exists; results are never overwritten")
    if args.mirror and not os.path.isdir(args.mirror):
        raise SystemExit(f"--mirror {args.mirror} is not an existing folder")
    if args.budget <= 0:
        raise SystemExit(f"--budget must be positive, got {args.budget}")
    Path(args.out).mkdir(parents=True)
    Driver(args).main()


if __name__ == "__main__":
    main()
