"""Plot the embedded eGRU's accuracy vs model bytes and vs weight bit width from KWS results.

Usage::

    python examples/plot_embedded.py runs/kws --out figs/kws_size     # -> figs/kws_size.png/.pdf

Arguments are ``metrics.json`` files of ``dualsparse train --task kws --out DIR`` runs or
folders searched for them (e.g. one run per ``--bits`` value and seed). Prints the plotted
numbers (means and std over seeds) as JSON. Refuses to overwrite existing figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dualsparse.analysis.embedded_figures import accuracy_vs_size, load_kws_results


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", help="metrics.json files or folders with them")
    p.add_argument("--out", required=True, help="figure path without suffix (.png and .pdf)")
    args = p.parse_args(argv)
    taken = [f for f in (Path(f"{args.out}.png"), Path(f"{args.out}.pdf")) if f.exists()]
    if taken:
        raise ValueError(f"--out: {str(taken[0])!r} exists; choose a new path")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    data = accuracy_vs_size(load_kws_results(args.results), args.out)
    print(json.dumps(data, indent=2))
    return data


if __name__ == "__main__":
    main()
