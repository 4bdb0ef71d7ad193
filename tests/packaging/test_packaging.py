"""Packaging: the wheel installs and imports on its own; core modules need no extra."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

import dualsparse

ROOT = Path(__file__).resolve().parents[2]
EXTRAS = ("plots", "tensorboard", "ray", "export", "gpu", "docs", "test")

# Modules that may need an extra at import time, and the only ones allowed to: matplotlib
# (analysis figures, extra plots) and triton (the GPU inference kernels, extra gpu).
NEEDS_EXTRA = {"dualsparse.analysis.figures", "dualsparse.analysis.report",
               "dualsparse.engine.triton_events"}

_BLOCKER = textwrap.dedent("""
    import importlib, pkgutil, sys
    BLOCK = {"matplotlib", "tensorboard", "ray", "onnx", "onnxruntime", "onnxscript",
             "triton", "pdoc", "neurobench", "snntorch"}
    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCK:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Blocker())
    import dualsparse
    failed = []
    for m in pkgutil.walk_packages(dualsparse.__path__, "dualsparse."):
        try:
            importlib.import_module(m.name)
        except ImportError:
            failed.append(m.name)
    print(" ".join(sorted(failed)) or "-")
""")


def test_core_modules_import_without_any_extra() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", _BLOCKER], env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    failed = set(out.split()) - {"-"}
    assert failed <= NEEDS_EXTRA, f"modules that need an optional package: {failed}"


def test_pyproject_has_ranges_extras_and_one_version() -> None:
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in meta and meta["dynamic"] == ["version"]
    assert not [d for d in meta["dependencies"] if "==" in d]
    assert set(EXTRAS) <= set(meta["optional-dependencies"])
    pinned = (ROOT / "requirements.txt").read_text()
    assert "torch==" in pinned and "pdoc==" in pinned and "onnxruntime==" in pinned


@pytest.mark.slow
def test_wheel_installs_and_imports_in_a_fresh_venv(tmp_path: Path) -> None:
    # build from a copy, so that build/ and *.egg-info never appear in the checkout
    src = tmp_path / "src_copy"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-q", "-w", str(dist), str(src)],
                   check=True, timeout=300, capture_output=True)
    (wheel,) = dist.glob("dualsparse-*.whl")
    assert wheel.name.startswith(f"dualsparse-{dualsparse.__version__}-")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = z.read(meta_name).decode()
    assert "dualsparse/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert f"Version: {dualsparse.__version__}\n" in meta
    assert "License-Expression: Apache-2.0" in meta
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist: torch")]
    assert requires and not [r for r in requires if "==" in r]
    for extra in EXTRAS:
        assert f"Provides-Extra: {extra}\n" in meta

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    py = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                    "--disable-pip-version-check", "-q", str(wheel)], check=True, timeout=300,
                   capture_output=True)
    # dependencies come from this interpreter's site-packages (no network); the checkout's
    # src/ is not on the path and the working directory is elsewhere
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    probe = ("import dualsparse, dualsparse.models, dualsparse.engine, importlib.metadata as m;"
             "print(dualsparse.__file__); print(m.version('dualsparse'))")
    out = subprocess.run([str(py), "-c", probe], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, check=True).stdout.split()
    assert out[0].startswith(str(venv)) and out[1] == dualsparse.__version__
    cli = subprocess.run([str(venv / "bin" / "dualsparse"), "--help"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0 and "train" in cli.stdout
