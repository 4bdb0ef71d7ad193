"""``make demo``: train the ``cpu-small`` EGRU language model on Penn Treebank, evaluate it on
the test set at batch 1, and print a short report: test perplexity, activity sparsity per
layer, dense vs effective MACs per token.

Usage::

    python examples/demo.py [--out runs/demo-cpu-small] [--quick] [extra train flags...]

``--quick`` trains 40 steps and tests on the first 5,000 test tokens (a smoke run of about
a minute); without it the full preset runs (about 5 minutes of training on 2 idle CPU cores,
then the whole test set). Needs PTB under ``$DUALSPARSE_DATA`` (``make demo`` sets it) or in
the download cache.
"""

from __future__ import annotations

import argparse
import sys
import time

from dualsparse.cli import build_train_parser
from dualsparse.train import lm_task

QUICK = ["--max-steps", "40", "--eval-interval", "20", "--valid-tokens", "5000",
         "--test-tokens", "5000"]


def report(result: dict) -> str:
    """The demo's summary table from a ``dualsparse train`` result dict."""
    test = result["test"]
    acc = test["accounting"]
    lines = [
        f"test perplexity: {test['ppl']:.2f}  (batch {test['batch_size']}, {test['tokens']:,} "
        f"tokens, weights: {test['weights']})",
        "",
        f"{'layer':<8}{'units':>6}{'activity sparsity':>19}{'dense MAC/token':>17}"
        f"{'effective MAC/token':>21}{'reduction':>11}",
    ]
    for r in acc["layers"]:
        lines.append(f"{r['layer']:<8}{r['hidden_size']:>6}{r['activity_sparsity']:>19.3f}"
                     f"{r['dense_macs']:>17,.0f}{r['effective_macs']:>21,.0f}"
                     f"{r['reduction']:>10.2f}x")
    lines.append(f"{'RNN':<8}{'':>6}{acc['mean_activity_sparsity']:>19.3f}"
                 f"{acc['rnn_dense_macs']:>17,.0f}{acc['rnn_effective_macs']:>21,.0f}"
                 f"{acc['rnn_reduction']:>10.2f}x")
    d = acc.get("decoder")
    if d:
        lines.append(f"{'decoder':<8}{d['output_size']:>6}{'':>19}{d['dense_macs']:>17,.0f}"
                     f"{d['effective_macs']:>21,.0f}{d['reduction']:>10.2f}x")
    lines.append("")
    lines.append("activity sparsity: fraction of zero outputs; effective MACs count only the "
                 "weight columns of nonzero inputs (event-driven cost).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--out", default="runs/demo-cpu-small")
    pre.add_argument("--quick", action="store_true")
    known, extra = pre.parse_known_args(argv)
    train_argv = ["--preset", "cpu-small", "--save", known.out,
                  *(QUICK if known.quick else []), *extra]
    parser, _ = build_train_parser(train_argv)
    args = parser.parse_args(train_argv)
    print(f"dualsparse demo: EGRU language model on Penn Treebank (preset cpu-small"
          f"{', quick' if known.quick else ''}), output in {known.out}", flush=True)
    t0 = time.perf_counter()
    result = lm_task.run(args)
    wall = time.perf_counter() - t0
    print("\n=== report ===")
    print(report(result))
    print(f"wall time: {wall:.0f} s (training {result['train']['train_seconds']:.0f} s, "
          f"test {result['test']['seconds']:.0f} s); {result['parameters']:,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
