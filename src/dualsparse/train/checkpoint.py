"""Crash-safe training checkpoints: safetensors for tensors, JSON for everything else.

A checkpoint named ``tag`` (``"latest"``, ``"best"``) in ``directory`` is two files:

* ``{tag}-{step:08d}-{nonce}.safetensors``: all tensors (model, optimiser moments, RNG
  states as ``uint8``, carried hidden states, ...), under flat dotted keys;
* ``{tag}.json``: the *pointer*: which tensor file belongs to it, its sha256, and the JSON
  part (config, step, metrics, iterator position, code version, git commit).

Write order: (1) the tensor file under a fresh name (temp file, fsync, ``os.replace``);
(2) the JSON pointer (temp file, fsync, ``os.replace``); (3) delete the older tensor files of
``tag`` that *this process* wrote (or adopted with :func:`adopt_checkpoint_files` when it
resumed the run); files of another process are never deleted. A kill at any moment therefore
leaves ``{tag}.json`` pointing at a complete tensor file: before step 2 completes it still
names the previous one, which is deleted only after.

A model alone (e.g. a pruned model with its masks and the pruner's state) is the same format
under tag ``"model"``: :func:`save_model` / :func:`load_model`.

Nested state (optimizer ``state_dict()``, iterator state, ...) is stored with
:func:`split_state` / :func:`join_state`: tensors go to the safetensors file under
``prefix.path.to.key``, the rest stays in JSON with ``{"__tensor__": key}`` placeholders.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import secrets
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dualsparse.atomic import atomic_path, atomic_write_bytes, atomic_write_json
from dualsparse.models.tracing import all_finite
from dualsparse.sparsity.pruner import Pruner
from dualsparse.version import __version__

FORMAT = "dualsparse-checkpoint"
#: tensor files this process wrote or adopted (resolved paths): the only ones it deletes
_OWNED: set[Path] = set()
FORMAT_VERSION = 1
_TENSOR = "__tensor__"
_TUPLE = "__tuple__"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match the model it is loaded into."""


# --------------------------------------------------------------------------- tensor files
def _atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, tmp)


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------- nested state
def split_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON form of a nested dict/list/tuple; tensors move into ``tensors`` under dotted keys.

    Each tensor is stored as its own copy, so a state holding one tensor twice (or a tensor
    and a view of it) saves; dict keys ``__tensor__``/``__tuple__`` are reserved (refused)."""
    if isinstance(obj, torch.Tensor):
        key = prefix
        if key in tensors:
            raise ValueError(f"duplicate tensor key {key!r}")
        # a copy of its own: safetensors refuses tensors that share memory
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        reserved = {_TENSOR, _TUPLE} & {str(k) for k in obj}
        if reserved:
            raise ValueError(f"state at {prefix!r} uses the reserved key(s) {sorted(reserved)}; "
                             "rename them to store this state in a checkpoint")
        return {str(k): split_state(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return {_TUPLE: [split_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [split_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return split_state(torch.from_numpy(obj.copy()), prefix, tensors)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} in a checkpoint")


def join_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_state`."""
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            key = obj[_TENSOR]
            if key not in tensors:
                raise CheckpointError(f"checkpoint tensor {key!r} is missing")
            return tensors[key]
        if set(obj) == {_TUPLE}:
            return tuple(join_state(v, tensors) for v in obj[_TUPLE])
        return {k: join_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_state(v, tensors) for v in obj]
    return obj


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with integer state keys turned into strings (JSON keys)."""
    sd = optimizer.state_dict()
    return {"state": {str(k): v for k, v in sd["state"].items()},
            "param_groups": sd["param_groups"]}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Restore :func:`optimizer_state` output; ``CheckpointError`` if the groups differ."""
    groups = state["param_groups"]
    if len(groups) != len(optimizer.param_groups) or any(
            len(g["params"]) != len(h["params"])
            for g, h in zip(groups, optimizer.param_groups, strict=True)):
        raise CheckpointError(
            "optimizer state does not match: checkpoint has parameter groups of sizes "
            f"{[len(g['params']) for g in groups]}, the optimizer "
            f"{[len(g['params']) for g in optimizer.param_groups]}")
    optimizer.load_state_dict({"state": {int(k): v for k, v in state["state"].items()},
                               "param_groups": groups})


# ---------------------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) RNG states."""
    py = random.getstate()
    np_state = np.random.get_state()  # noqa: NPY002 (the global state others use)
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"kind": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` output."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32),  # noqa: NPY002
                         n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.to(torch.uint8) for t in state["cuda"]])


# ------------------------------------------------------------------------ model tensors
def model_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, aliases)``: the state dict with shared tensors (tied weights) stored once;
    ``aliases`` maps a dropped key to the key that holds the same storage."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, t in model.state_dict().items():
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if ident in seen:
            aliases[name] = seen[ident]
            continue
        seen[ident] = name
        tensors[name] = t.detach().cpu().contiguous()
    return tensors, aliases


def load_model_tensors(model: nn.Module, tensors: dict[str, torch.Tensor],
                       aliases: dict[str, str] | None = None) -> None:
    """Load tensors into ``model``; ``CheckpointError`` naming every mismatch otherwise."""
    full = dict(tensors)
    for name, target in (aliases or {}).items():
        if target not in full:
            raise CheckpointError(f"alias {name!r} -> {target!r}: target missing")
        full[name] = full[target]
    expected = model.state_dict()
    missing = sorted(set(expected) - set(full))
    unexpected = sorted(set(full) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(full[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in full and full[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing from the checkpoint: {missing}")
        if unexpected:
            parts.append(f"not in the model: {unexpected}")
        if shapes:
            parts.append("shape mismatch: " + "; ".join(shapes))
        raise CheckpointError("checkpoint does not match the model: " + " | ".join(parts))
    for k, t in full.items():
        if t.is_floating_point() and not all_finite(t):
            raise CheckpointError(f"checkpoint tensor {k!r} contains NaN or inf")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in full.items()})


# ----------------------------------------------------------------------------- save / load
@functools.lru_cache(maxsize=8)
def git_commit(cwd: str | None = None) -> str | None:
    """The git commit of the source tree (looked up once per process), or None."""
    cwd = cwd or str(Path(__file__).resolve().parent)
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def save_checkpoint(directory: str | os.PathLike[str], tag: str,
                    tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write checkpoint ``tag`` (see module docstring); returns the JSON pointer's path.

    Args:
        tensors: flat ``name -> tensor`` (CPU, contiguous, no shared storage).
        meta: JSON-serialisable metadata; must contain an int ``step``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    step = int(meta["step"])
    name = f"{tag}-{step:08d}-{secrets.token_hex(4)}.safetensors"
    _atomic_save_tensors(directory / name, tensors)
    pointer = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "tag": tag,
        "tensors_file": name, "sha256": sha256_file(directory / name),
        "dualsparse_version": __version__, **meta,
    }
    json_path = directory / f"{tag}.json"
    new = (directory / name).resolve()
    _OWNED.add(new)
    atomic_write_json(json_path, pointer)
    for old in directory.glob(f"{tag}-*.safetensors"):
        path = old.resolve()
        if path != new and path in _OWNED:
            old.unlink(missing_ok=True)
            _OWNED.discard(path)
    return json_path


def adopt_checkpoint_files(directory: str | os.PathLike[str],
                           tags: tuple[str, ...] = ("latest", "best")) -> None:
    """Treat the tensor files the pointers ``tags`` in ``directory`` name as this process's
    (a resumed run replaces them); files no pointer names stay untouched."""
    for tag in tags:
        try:
            meta = read_checkpoint_meta(directory, tag)
        except CheckpointError:
            continue
        name = meta.get("tensors_file")
        if isinstance(name, str) and Path(name).name == name:
            _OWNED.add((Path(directory) / name).resolve())


def read_checkpoint_meta(directory: str | os.PathLike[str], tag: str = "latest"
                         ) -> dict[str, Any]:
    """The JSON part of checkpoint ``tag``; ``CheckpointError`` if absent or not ours."""
    path = Path(directory) / f"{tag}.json"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint {tag!r} in {directory} ({path.name} not found)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dualsparse checkpoint")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {meta.get('format_version')}, "
                              f"this code reads {FORMAT_VERSION}")
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path}: 'step' must be an int >= 0, got {step!r}")
    for key in ("model_config", "run_config", "aliases", "pruner", "extra"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise CheckpointError(f"{path}: {key!r} must be a JSON object, got "
                                  f"{type(meta[key]).__name__}")
    return meta


def load_checkpoint(directory: str | os.PathLike[str], tag: str = "latest",
                    verify: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, meta)`` of checkpoint ``tag``; verifies the tensor file's sha256."""
    meta = read_checkpoint_meta(directory, tag)
    name, digest = meta.get("tensors_file"), meta.get("sha256")
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise CheckpointError(f"checkpoint {tag!r} in {directory}: tensors_file must be a file "
                              f"name inside the run folder, got {name!r}")
    if not isinstance(digest, str):
        raise CheckpointError(f"checkpoint {tag!r} in {directory}: sha256 missing or not a "
                              "string")
    path = Path(directory) / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint {tag!r}: tensor file {path.name} is missing")
    if verify and sha256_file(path) != digest:
        raise CheckpointError(f"checkpoint {tag!r}: {path.name} does not match its sha256 "
                              "(corrupt or replaced)")
    # safetensors hands back views into one buffer, not 64-byte aligned: CPU kernels may
    # then round differently from the run that saved them, so a resumed run would not be
    # bitwise equal to an uninterrupted one. Own, aligned copies keep resume exact.
    return {k: v.clone() for k, v in load_file(str(path)).items()}, meta


# ------------------------------------------------------------------ model part of a checkpoint
MODEL_PREFIX = "model."


def model_part(tensors: dict[str, torch.Tensor], meta: dict[str, Any]
               ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, aliases)`` of a checkpoint's model, with the ``model.`` prefix removed (the
    one place it is stripped)."""
    n = len(MODEL_PREFIX)
    part = {k[n:]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    aliases = {k[n:]: v[n:] for k, v in (meta.get("aliases") or {}).items()
               if k.startswith(MODEL_PREFIX)}
    return part, aliases


def load_model_part(model: nn.Module, tensors: dict[str, torch.Tensor],
                    meta: dict[str, Any]) -> None:
    """Load the ``model.*`` tensors (and aliases) of a checkpoint into ``model``."""
    load_model_tensors(model, *model_part(tensors, meta))


def load_weights(directory: str | os.PathLike[str], tag: str, model: nn.Module
                 ) -> dict[str, Any]:
    """Load the weights of checkpoint ``tag`` into ``model``; returns the checkpoint's JSON."""
    tensors, meta = load_checkpoint(directory, tag)
    load_model_part(model, tensors, meta)
    return meta


def save_model(directory: str | os.PathLike[str], model: nn.Module,
               pruner: Pruner | None = None, extra: dict[str, Any] | None = None,
               tag: str = "model") -> Path:
    """Save ``model`` (mask buffers included) and ``pruner``'s state as checkpoint ``tag``.

    ``directory`` must not already hold a checkpoint ``tag`` (a result is never
    overwritten). Returns the JSON pointer's path.
    """
    if (Path(directory) / f"{tag}.json").exists():
        raise FileExistsError(f"{directory} already holds a checkpoint {tag!r}; choose another "
                              "folder")
    tensors, aliases = model_tensors(model)
    meta = {"step": 0, "aliases": {MODEL_PREFIX + k: MODEL_PREFIX + v
                                   for k, v in aliases.items()},
            "model_config": getattr(model, "get_config", dict)(),
            "pruner": None if pruner is None else pruner.state_dict(),
            "extra": extra or {}, "git_commit": git_commit()}
    return save_checkpoint(directory, tag, {MODEL_PREFIX + k: v for k, v in tensors.items()},
                           meta)


def load_model(directory: str | os.PathLike[str], model: nn.Module, tag: str = "model"
               ) -> Pruner | None:
    """Load a :func:`save_model` checkpoint into a *fresh* ``model``: rebuilds the pruner
    (which adds the mask buffers), then loads weights and masks. Returns the pruner (None for
    an unpruned or finalized model)."""
    tensors, meta = load_checkpoint(directory, tag)
    pruner = Pruner.from_config(model, meta["pruner"]) if meta.get("pruner") else None
    load_model_part(model, tensors, meta)
    if pruner is not None:
        pruner.masks.apply()
    return pruner


__all__ = [
    "MODEL_PREFIX", "CheckpointError", "adopt_checkpoint_files", "atomic_write_bytes",
    "atomic_write_json", "git_commit",
    "join_state", "load_checkpoint", "load_model", "load_model_part", "load_model_tensors",
    "load_optimizer_state", "load_weights", "model_tensors", "optimizer_state",
    "read_checkpoint_meta", "rng_state", "save_checkpoint", "save_model", "set_rng_state",
    "split_state",
]
