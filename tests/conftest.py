"""Suite-wide settings: the Hypothesis profiles of the fuzz tests, and a check that no child
process outlives the test session.

Hypothesis profiles (``tests/fuzz/``):

* ``ci`` (the default, also what ``make test`` runs): derandomised (the same examples on every
  run, so a failure reproduces), a bounded number of examples per test, no deadline (the
  machine is small and shared), no example database written into the checkout;
* ``dev``: random examples, 10x more of them, for a longer local search
  (``HYPOTHESIS_PROFILE=dev pytest tests/fuzz``).

``CI`` set in the environment always selects ``ci``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

#: Examples per fuzz test under the ``ci`` profile; a test may lower it for itself.
CI_MAX_EXAMPLES = 25

settings.register_profile(
    "ci", derandomize=True, max_examples=CI_MAX_EXAMPLES, deadline=None, database=None,
    print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "dev", max_examples=10 * CI_MAX_EXAMPLES, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else
                      os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: Seconds a child process may take to exit after the last test before it counts as leaked.
LEAK_GRACE_S = 10.0
#: Helpers that Python starts for the pytest process itself and that exit with it (they are
#: not left behind by a test): multiprocessing's resource tracker and fork server.
PROCESS_LIFETIME_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _children(pid: int) -> dict[int, str]:
    """Living (not zombie) descendants of ``pid`` -> their command line, read from /proc."""
    parent_of: dict[int, int] = {}
    info: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # exited while we looked
            continue
        # the command name (field 2) is in parentheses and may contain spaces
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        if state != "Z":
            parent_of[int(entry.name)] = int(ppid)
            info[int(entry.name)] = cmd.strip() or stat[stat.index("(") + 1:stat.rindex(")")]
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        for child, parent in parent_of.items():
            if parent == p and child not in found:
                found[child] = info[child]
                frontier.append(child)
    return found


def leaked_children(pid: int, before: set[int], grace_s: float) -> dict[int, str]:
    """Descendants of ``pid`` not in ``before`` that are still alive after ``grace_s``."""
    deadline = time.monotonic() + grace_s
    while True:
        extra = {p: c for p, c in _children(pid).items() if p not in before
                 and not any(h in c for h in PROCESS_LIFETIME_HELPERS)}
        if not extra or time.monotonic() >= deadline:
            return extra
        time.sleep(0.2)


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_child_processes():
    """Fail the session (an error at teardown) if a process the tests started outlives them;
    the leaked processes are then killed so that they do not wait forever."""
    if not Path("/proc/self/stat").exists():
        yield
        return
    me = os.getpid()
    before = set(_children(me))
    yield
    leaked = leaked_children(me, before, LEAK_GRACE_S)
    for pid in leaked:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if leaked:
        lines = "\n".join(f"  pid {p}: {c}" for p, c in sorted(leaked.items()))
        pytest.fail(f"{len(leaked)} child process(es) outlived the test session by more than "
                    f"{LEAK_GRACE_S:.0f} s (killed now):\n{lines}", pytrace=False)


@pytest.fixture
def one_torch_thread():
    """One torch intra-op thread for the test (tiny models only lose from threads on this small
    shared machine); the thread count and the global determinism switch (which the Trainer
    sets) are restored afterwards. Test folders of tiny models use it for every test."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
