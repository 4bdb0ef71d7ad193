"""The ``echo`` run function: no training, for testing schedulers, stores and clusters.

It sleeps ``sleep_s`` seconds (or waits until the file ``wait_for`` exists, polling every
0.05 s), raises if ``fail`` is true, touches one new file in ``marker_dir`` per execution if
given (to count executions across processes), and returns the config with its process id.
It imports nothing heavy, so workers running it start fast.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from dualsparse.validation import check_real


def run_echo(config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Sleep / wait (see module docstring), raise if ``config['fail']``, echo the config."""
    sleep = check_real("sleep_s", config.get("sleep_s", 0.0), low=0.0)
    wait_for = config.get("wait_for")
    if wait_for:
        while not Path(wait_for).exists():
            time.sleep(0.05)
    else:
        time.sleep(sleep)
    if config.get("fail"):
        raise RuntimeError(f"echo run asked to fail: {config['fail']!r}")
    marker = config.get("marker_dir")
    if marker:  # one file per execution, to count executions across processes
        Path(marker).mkdir(parents=True, exist_ok=True)
        (Path(marker) / f"{config.get('i', 'run')}-{os.getpid()}-{time.time_ns()}").touch()
    return {"echo": config, "pid": os.getpid(), "run_dir": str(run_dir)}


__all__ = ["run_echo"]
