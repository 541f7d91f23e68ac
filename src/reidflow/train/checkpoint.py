"""Atomic, pickle-free training checkpoints.

Layout of ``<root>/ckpt-<iteration>/`` (``<iteration>`` = completed iterations)::

    model-<name>.safetensors   state_dict of every module (parameters and buffers)
    optim-<name>.safetensors   tensors of every optimizer's state (momentum buffers, Adam moments)
    state.safetensors          other tensors (torch RNG states, tensors in scheduler/extra state)
    state.json                 everything else: position, optimizer param groups, scheduler and
                               GradScaler state, Python/NumPy RNG states, the method's extra state

``<root>/latest`` names the newest complete checkpoint. A checkpoint is written into a temporary
directory and renamed, so a crash never leaves a half-written ``ckpt-*``. Nothing is pickled:
nested Python state is split into JSON plus named tensors (see :func:`encode_state`).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from reidflow.errors import ArtifactError, ConfigError

FORMAT = "reidflow.checkpoint/1"
LATEST = "latest"
_DIR_PATTERN = re.compile(r"^ckpt-(\d+)$")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")


# ---------------------------------------------------------------------------------------------
# JSON + tensors codec


def encode_state(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """Return a JSON-able copy of ``obj``; tensors go into ``tensors`` keyed by their path.

    Supported: dict (any hashable JSON-able keys), list, tuple, str, int, float, bool, None,
    NumPy arrays/scalars and torch tensors. Anything else raises :class:`ArtifactError` naming
    the path, because the alternative (pickle) would make loading unsafe.
    """
    if isinstance(obj, torch.Tensor):
        key = path or "_"
        if key in tensors:
            raise ArtifactError(f"checkpoint: two tensors map to the same key {key!r}")
        tensors[key] = obj.detach().to("cpu").clone().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_state(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_state(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode_state(v, tensors, f"{path}.{k}" if path else k) for k, v in obj.items()}
        return {
            "__items__": [
                [encode_state(k, tensors, f"{path}.key{i}"), encode_state(v, tensors, f"{path}.{k}")]
                for i, (k, v) in enumerate(obj.items())
            ]
        }
    raise ArtifactError(
        f"checkpoint: cannot store a {type(obj).__name__} at {path or '<root>'!r}; expected JSON-able "
        "values, NumPy arrays or torch tensors"
    )


def decode_state(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode_state`."""
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        key = obj["__tensor__"]
        if key not in tensors:
            raise ArtifactError(f"checkpoint: tensor {key!r} referenced by state.json is missing")
        return tensors[key]
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=np.dtype(obj["dtype"]))
    if "__tuple__" in obj:
        return tuple(decode_state(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_hashable(decode_state(k, tensors)): decode_state(v, tensors) for k, v in obj["__items__"]}
    return {k: decode_state(v, tensors) for k, v in obj.items()}


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


# ---------------------------------------------------------------------------------------------
# module weights


def module_tensors(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a state_dict into safetensors-storable tensors and JSON-able non-tensor entries.

    Tensors sharing storage (tied weights), views into a larger storage and non-contiguous
    tensors are cloned, because safetensors refuses aliased storage.
    """
    tensors: dict[str, torch.Tensor] = {}
    others: dict[str, Any] = {}
    seen_storages: set[int] = set()
    for key, value in module.state_dict().items():
        if not isinstance(value, torch.Tensor):
            others[key] = value
            continue
        t = value.detach().to("cpu")
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        whole = t.is_contiguous() and t.numel() * t.element_size() == storage.nbytes()
        if ptr in seen_storages or not whole:
            t = t.clone().contiguous()
        seen_storages.add(ptr)
        tensors[key] = t
    return tensors, others


# ---------------------------------------------------------------------------------------------
# RNG


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (when initialised) CUDA RNG states of this process."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured (CUDA only when present on both sides)."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.to(torch.uint8) for t in state["cuda"]])


# ---------------------------------------------------------------------------------------------
# save


@dataclass
class TrainingState:
    """References to everything a checkpoint captures (live objects, read at save time)."""

    iteration: int
    epoch: int
    batch_in_epoch: int
    modules: Mapping[str, nn.Module]
    optimizers: Mapping[str, Optimizer] = field(default_factory=dict)
    schedulers: Mapping[str, LRScheduler] = field(default_factory=dict)
    scaler: torch.amp.GradScaler | None = None
    extra_state: Mapping[str, Any] = field(default_factory=dict)
    rng_states: list[dict[str, Any]] = field(default_factory=list)  # one per rank
    metadata: Mapping[str, Any] = field(default_factory=dict)


def check_name(kind: str, name: str) -> None:
    """Module/optimizer names become file names; refuse anything that is not a plain token."""
    if not _NAME_PATTERN.match(name):
        raise ConfigError(
            f"{kind} name {name!r} must match {_NAME_PATTERN.pattern} (it names a checkpoint file)"
        )


def checkpoint_dir_name(iteration: int) -> str:
    return f"ckpt-{iteration:08d}"


def save_checkpoint(root: str | Path, state: TrainingState, keep_last: int | None = None) -> Path:
    """Write ``<root>/ckpt-<iteration>/`` atomically, update ``latest`` and prune old checkpoints."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root)
    final = root / checkpoint_dir_name(state.iteration)
    tmp = root / f".tmp-{final.name}-{os.getpid()}-{socket.gethostname()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        doc = _write_payload(tmp, state)
        (tmp / "state.json").write_text(json.dumps(doc, indent=1, allow_nan=True))
        _fsync_dir(tmp)
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_latest(root, final.name)
    if keep_last is not None:
        prune_checkpoints(root, keep_last, protect=final)
    return final


def _write_payload(directory: Path, state: TrainingState) -> dict[str, Any]:
    modules_doc: dict[str, Any] = {}
    for name, module in state.modules.items():
        check_name("module", name)
        tensors, others = module_tensors(module)
        save_file(tensors, directory / f"model-{name}.safetensors")
        modules_doc[name] = {"file": f"model-{name}.safetensors", "non_tensor": encode_state(others, {})}
    optim_doc: dict[str, Any] = {}
    for name, optimizer in state.optimizers.items():
        check_name("optimizer", name)
        optim_tensors: dict[str, torch.Tensor] = {}
        optim_doc[name] = encode_state(optimizer.state_dict(), optim_tensors)
        save_file(optim_tensors, directory / f"optim-{name}.safetensors")
    other_tensors: dict[str, torch.Tensor] = {}
    doc = {
        "format": FORMAT,
        "iteration": state.iteration,
        "epoch": state.epoch,
        "batch_in_epoch": state.batch_in_epoch,
        "modules": modules_doc,
        "optimizers": optim_doc,
        "schedulers": {
            name: encode_state(s.state_dict(), other_tensors, f"scheduler.{name}")
            for name, s in state.schedulers.items()
        },
        "scaler": encode_state(state.scaler.state_dict(), other_tensors, "scaler") if state.scaler else None,
        "rng": [encode_state(r, other_tensors, f"rng.{i}") for i, r in enumerate(state.rng_states)],
        "extra_state": encode_state(dict(state.extra_state), other_tensors, "extra"),
        "metadata": encode_state(dict(state.metadata), {}, "metadata"),
    }
    save_file(other_tensors, directory / "state.safetensors")
    return doc


def _fsync_dir(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())


def _replace_dir(src: Path, dst: Path) -> None:
    if dst.exists():  # e.g. a run resumed from an earlier checkpoint reaches this iteration again
        trash = dst.with_name(f".trash-{dst.name}-{os.getpid()}-{socket.gethostname()}")
        os.rename(dst, trash)
        os.rename(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(src, dst)


_TEMPORARY = re.compile(r"^\.(?:tmp|trash)-ckpt-\d+-(?P<pid>\d+)-(?P<host>.+)$")


def remove_stale_temporaries(root: str | Path) -> list[str]:
    """Remove ``.tmp-*``/``.trash-*`` folders that writers killed mid-save left in ``root`` (only those
    of processes of this host that no longer run); returns their names."""
    from reidflow.store.locks import holder_alive

    removed = []
    for path in Path(root).iterdir() if Path(root).is_dir() else []:
        match = _TEMPORARY.match(path.name)
        if match and not holder_alive(int(match["pid"]), match["host"]):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def _write_latest(root: Path, name: str) -> None:
    tmp = root / f".{LATEST}.tmp-{os.getpid()}"
    tmp.write_text(name + "\n")
    os.replace(tmp, root / LATEST)


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _DIR_PATTERN.match(path.name)
        if match and (path / "state.json").is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def prune_checkpoints(root: str | Path, keep_last: int, protect: Path | None = None) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (never ``protect``)."""
    if keep_last < 1:
        raise ConfigError(f"keep_last must be >= 1, got {keep_last}")
    for path in list_checkpoints(root)[:-keep_last]:
        if protect is None or path.resolve() != protect.resolve():
            shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The checkpoint named by ``<root>/latest`` (or the newest complete one); None if there is none."""
    root = Path(root)
    pointer = root / LATEST
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if not (target / "state.json").is_file():
            raise ArtifactError(
                f"{pointer}: names {target.name}, which is not a complete checkpoint directory"
            )
        return target
    found = list_checkpoints(root)
    return found[-1] if found else None


# ---------------------------------------------------------------------------------------------
# load


@dataclass
class Checkpoint:
    """A checkpoint read from disk (tensors on CPU), ready to be applied with :func:`restore`."""

    path: Path
    iteration: int
    epoch: int
    batch_in_epoch: int
    module_states: dict[str, dict[str, Any]]
    optimizer_states: dict[str, dict[str, Any]]
    scheduler_states: dict[str, dict[str, Any]]
    scaler_state: dict[str, Any] | None
    rng_states: list[dict[str, Any]]
    extra_state: dict[str, Any]
    metadata: dict[str, Any]


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ArtifactError(f"{path}: checkpoint file is missing")
    try:
        return load_file(path)
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ArtifactError(f"{path}: not a readable safetensors file ({exc})") from exc


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint directory (safetensors + JSON only; nothing is unpickled)."""
    path = Path(path)
    doc_path = path / "state.json"
    if not doc_path.is_file():
        raise ArtifactError(
            f"{doc_path}: missing; expected a checkpoint directory written by save_checkpoint"
        )
    try:
        doc = json.loads(doc_path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{doc_path}: invalid JSON ({exc})") from exc
    if doc.get("format") != FORMAT:
        raise ArtifactError(f"{doc_path}: format is {doc.get('format')!r}; expected {FORMAT!r}")
    module_states = {}
    for name, entry in doc["modules"].items():
        tensors = _load_tensors(path / entry["file"])
        module_states[name] = {**tensors, **decode_state(entry["non_tensor"], {})}
    optimizer_states = {
        name: decode_state(encoded, _load_tensors(path / f"optim-{name}.safetensors"))
        for name, encoded in doc["optimizers"].items()
    }
    others = _load_tensors(path / "state.safetensors")
    return Checkpoint(
        path=path,
        iteration=int(doc["iteration"]),
        epoch=int(doc["epoch"]),
        batch_in_epoch=int(doc["batch_in_epoch"]),
        module_states=module_states,
        optimizer_states=optimizer_states,
        scheduler_states={k: decode_state(v, others) for k, v in doc["schedulers"].items()},
        scaler_state=decode_state(doc["scaler"], others) if doc["scaler"] is not None else None,
        rng_states=[decode_state(r, others) for r in doc["rng"]],
        extra_state=decode_state(doc["extra_state"], others),
        metadata=decode_state(doc["metadata"], {}),
    )


def _check_same_names(kind: str, ckpt: Checkpoint, saved: Mapping[str, Any], live: Mapping[str, Any]) -> None:
    if set(saved) != set(live):
        raise ArtifactError(
            f"{ckpt.path}: holds {kind} {sorted(saved)} but the training method has {sorted(live)}"
        )


def _match_sequence_types(saved: Any, live: Any) -> Any:
    """JSON has no tuples: give param-group values back the type the live optimizer uses."""
    if isinstance(live, tuple) and isinstance(saved, list):
        return tuple(saved)
    return saved


def restore(
    ckpt: Checkpoint,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, Optimizer],
    schedulers: Mapping[str, LRScheduler],
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Load weights, optimizer, scheduler and scaler states into the live objects (strictly)."""
    _check_same_names("modules", ckpt, ckpt.module_states, modules)
    _check_same_names("optimizers", ckpt, ckpt.optimizer_states, optimizers)
    _check_same_names("schedulers", ckpt, ckpt.scheduler_states, schedulers)
    for name, module in modules.items():
        try:
            module.load_state_dict(ckpt.module_states[name], strict=True)
        except RuntimeError as exc:
            raise ArtifactError(
                f"{ckpt.path / f'model-{name}.safetensors'}: does not fit module {name!r}: {exc}"
            ) from exc
    for name, optimizer in optimizers.items():
        state = ckpt.optimizer_states[name]
        for saved_group, live_group in zip(state["param_groups"], optimizer.param_groups, strict=False):
            for key, value in saved_group.items():
                if key in live_group:
                    saved_group[key] = _match_sequence_types(value, live_group[key])
        try:
            optimizer.load_state_dict(state)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ArtifactError(f"{ckpt.path}: optimizer {name!r} state does not fit: {exc}") from exc
    for name, scheduler in schedulers.items():
        scheduler.load_state_dict(ckpt.scheduler_states[name])
    if scaler is not None and ckpt.scaler_state is not None:
        scaler.load_state_dict(ckpt.scaler_state)
