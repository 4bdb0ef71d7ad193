"""Progress bar of a sweep: finished runs (done + failed) out of all runs, read from the store.

A tqdm bar on a terminal (stderr), nothing otherwise, as the Trainer's bar. It reads the
store's counts, so it shows the work of every worker on the store, local or not::

    with SweepBar(store, sweep, enabled=True) as bar:
        ...                    # runs finish
        bar.refresh()          # re-read the counts from the store
"""

from __future__ import annotations

import sys
from types import TracebackType

from tqdm.auto import tqdm

from dualsparse.experiments.store import ResultStore


class SweepBar:
    """Runs finished in ``sweep`` (None: the whole store); postfix: running and failed runs.

    Args:
        store: an open :class:`ResultStore` (read by :meth:`refresh`).
        sweep: the sweep counted (None: every run in the store).
        enabled: False never draws; True draws when stderr is a terminal (tqdm's
            ``disable=None``).
    """

    def __init__(self, store: ResultStore, sweep: str | None, enabled: bool = True) -> None:
        self.store, self.sweep = store, sweep
        counts = store.counts(sweep)
        self.bar = tqdm(total=sum(counts.values()), initial=_finished(counts), unit="run",
                        desc=sweep or "runs", dynamic_ncols=True,
                        disable=None if enabled else True)
        self._postfix(counts)

    def refresh(self) -> None:
        """Re-read the store's counts and redraw."""
        counts = self.store.counts(self.sweep)
        self.bar.total = sum(counts.values())
        self.bar.n = _finished(counts)
        self._postfix(counts)

    def write(self, line: str) -> None:
        """Print ``line`` to stdout above the bar (plain print when no bar is drawn)."""
        tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()

    def _postfix(self, counts: dict[str, int]) -> None:
        self.bar.set_postfix(running=counts["running"], failed=counts["failed"], refresh=True)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> SweepBar:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _finished(counts: dict[str, int]) -> int:
    return counts["done"] + counts["failed"]


__all__ = ["SweepBar"]
