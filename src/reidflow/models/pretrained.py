"""Load pretrained backbone weights from a local file or a URL, mapping public key layouts.

Formats: ``.safetensors`` (preferred) and PyTorch ``.pth``/``.pt``/``.pth.tar`` files, which are
read only with ``torch.load(weights_only=True)``: a file holding anything but tensors and plain
containers is refused, never unpickled. The format is sniffed from the bytes, not the suffix.

Key mapping (``mapping="auto"``), in order:

1. unwrap ``{"state_dict": ...}`` / ``{"model": ...}`` containers; strip ``module.`` prefixes
   (DataParallel/DDP), and a ``backbone.``/``base.`` prefix when the checkpoint is a whole re-ID model;
2. drop classifier keys (``fc.*``, ``classifier.*``, ``last_linear.*``, ``head(s).*``) and, for a
   whole-model checkpoint, every non-backbone key — all listed in the report as ``dropped``;
3. let the target backbone rename its family's public layouts (``Backbone.remap_pretrained_key``:
   torchvision ResNet needs nothing, IBN-Net ``IN``/``BN``, torchvision MobileNetV2 ``features.<i>``,
   public OSNet ``conv2a``..``conv2d`` and OSNet-AIN ``conv2.<t>.layers``/``IN``);
4. send a plain-BN key ``X.<leaf>`` that has no target to ``X.bn.<leaf>`` when that exists (a BN
   checkpoint into a model whose norms were converted to BIN/MetaBIN/DSBN-style layers).

The returned :class:`LoadReport` lists loaded, missing, unexpected and dropped keys, and is logged.
A shape mismatch is a :class:`ConfigError` naming the key and both shapes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import shutil
import struct
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import torch
from torch import nn

from reidflow.errors import ConfigError, DataError

log = logging.getLogger(__name__)

_CONTAINER_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "net", "weights")
_WRAPPER_PREFIXES = ("module.",)
_WHOLE_MODEL_PREFIXES = ("backbone.", "base.")
_CLASSIFIER_KEY = re.compile(r"^(fc|classifier|last_linear|head|heads)\.")
_IGNORED_MISSING_LEAF = "num_batches_tracked"

KeyMapping = str | Callable[[str], str | None]


@dataclass
class LoadReport:
    """What a :func:`load_pretrained` call did. ``missing`` ignores BN ``num_batches_tracked``."""

    source: str
    file: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """True when every target key was loaded and every kept checkpoint key was used."""
        return not self.missing and not self.unexpected

    def summary(self, max_keys: int = 10) -> str:
        def preview(keys: list[str]) -> str:
            shown = ", ".join(keys[:max_keys])
            return shown + (f", ... (+{len(keys) - max_keys})" if len(keys) > max_keys else "")

        lines = [
            (
                f"pretrained {self.source}: loaded {len(self.loaded)} tensors, {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected, {len(self.dropped)} dropped (classifier/head)"
            )
        ]
        if self.missing:
            lines.append(f"  missing (left at init): {preview(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (ignored): {preview(self.unexpected)}")
        return "\n".join(lines)


def load_pretrained(
    model: nn.Module,
    source: str | os.PathLike,
    mapping: KeyMapping = "auto",
    *,
    cache_dir: str | os.PathLike | None = None,
    sha256: str | None = None,
    strict: bool = False,
) -> LoadReport:
    """Load weights from ``source`` (path, ``file://``, ``http(s)://``) into ``model``'s backbone.

    ``model`` is a backbone or anything with a ``backbone`` attribute (e.g. a ReIDModel: only its
    backbone is loaded). ``mapping`` is ``"auto"`` (see module doc), ``"none"`` (only strip
    ``module.`` and drop classifier keys) or a function from a checkpoint key to a target key (or
    None to drop it). ``sha256`` verifies the file; ``strict`` turns missing/unexpected keys into
    a ConfigError.
    """
    path = fetch_weights(source, cache_dir=cache_dir, sha256=sha256)
    state = read_state_dict(path)
    target = model.backbone if isinstance(getattr(model, "backbone", None), nn.Module) else model
    report = LoadReport(source=redact_url(str(source)), file=str(path))
    target_state = target.state_dict()
    mapped = _map_keys(state, target, target_state, mapping, report)
    order = {key: index for index, key in enumerate(target_state)}
    mismatches = [
        f"key {src_key!r} (-> {tgt_key!r}) has shape {tuple(tensor.shape)} in the checkpoint but "
        f"{tuple(target_state[tgt_key].shape)} in the model"
        for src_key, (tgt_key, tensor) in sorted(mapped.items(), key=lambda item: order[item[1][0]])
        if tensor.shape != target_state[tgt_key].shape
    ]
    if mismatches:
        more = f" (and {len(mismatches) - 5} more)" if len(mismatches) > 5 else ""
        raise ConfigError(f"pretrained {report.source}: " + "; ".join(mismatches[:5]) + more)
    to_load = {tgt_key: tensor for tgt_key, tensor in mapped.values()}
    target.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.missing = sorted(
        k for k in target_state if k not in to_load and not k.endswith(_IGNORED_MISSING_LEAF)
    )
    log.info(report.summary())
    if strict and not report.complete:
        raise ConfigError(f"strict loading failed:\n{report.summary(max_keys=50)}")
    return report


def _map_keys(
    state: Mapping[str, torch.Tensor],
    target: nn.Module,
    target_state: Mapping[str, torch.Tensor],
    mapping: KeyMapping,
    report: LoadReport,
) -> dict[str, tuple[str, torch.Tensor]]:
    """Checkpoint key -> (target key, tensor) for every key that has a target; fills the report."""
    state = {_strip_prefixes(k, _WRAPPER_PREFIXES): v for k, v in state.items()}
    if mapping == "auto":
        state = _strip_whole_model_prefix(state, target_state, report)
    elif mapping != "none" and not callable(mapping):
        raise ConfigError(f"load_pretrained: mapping must be 'auto', 'none' or a function, got {mapping!r}")
    remap = getattr(target, "remap_pretrained_key", None) if mapping == "auto" else None
    result: dict[str, tuple[str, torch.Tensor]] = {}
    claimed: dict[str, str] = {}
    for key, tensor in state.items():
        if _CLASSIFIER_KEY.match(key):
            report.dropped.append(key)
            continue
        if callable(mapping):
            new_key = mapping(key)
            if new_key is None:
                report.dropped.append(key)
                continue
        else:
            new_key = remap(key) if remap is not None else key
            if mapping == "auto" and new_key not in target_state:
                new_key = _redirect_to_bn_branch(new_key, target_state)
        if new_key not in target_state:
            report.unexpected.append(key)
            continue
        if new_key in claimed:
            raise ConfigError(
                f"pretrained {report.source}: keys {claimed[new_key]!r} and {key!r} both map to {new_key!r}"
            )
        claimed[new_key] = key
        if new_key != key:
            report.renamed[key] = new_key
        result[key] = (new_key, tensor)
    report.unexpected.sort()
    return result


def _strip_prefixes(key: str, prefixes: tuple[str, ...]) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def _strip_whole_model_prefix(
    state: dict[str, torch.Tensor], target_state: Mapping[str, torch.Tensor], report: LoadReport
) -> dict[str, torch.Tensor]:
    """A whole re-ID model checkpoint (``backbone.*`` + head keys): keep the backbone part only."""
    for prefix in _WHOLE_MODEL_PREFIXES:
        if any(k.startswith(prefix) for k in target_state):
            continue
        if sum(k.startswith(prefix) for k in state) >= len(state) / 2:
            kept = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            report.dropped.extend(k for k in state if not k.startswith(prefix))
            return kept
    return state


def _redirect_to_bn_branch(key: str, target_state: Mapping[str, torch.Tensor]) -> str:
    prefix, _, leaf = key.rpartition(".")
    candidate = f"{prefix}.bn.{leaf}" if prefix else f"bn.{leaf}"
    return candidate if candidate in target_state else key


# --------------------------------------------------------------------------- reading files


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` dict from a safetensors or (weights-only) PyTorch file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pretrained weights not found: {path}")
    if _looks_like_safetensors(path):
        return _read_safetensors(path)
    if path.suffix == ".safetensors":
        raise DataError(f"{path}: not a valid safetensors file (bad header)")
    return _read_torch(path)


def _looks_like_safetensors(path: Path) -> bool:
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(9)
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 0 < header_len <= size - 8 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{path}: corrupt safetensors file ({exc})") from None


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        text = str(exc)
        refused_global = re.search(r"GLOBAL (\S+) was not an allowed global", text)
        if refused_global:
            raise DataError(
                f"{path}: refusing to load: the file holds the Python object {refused_global.group(1)}, and "
                "weights are only read with torch.load(weights_only=True) (tensors and plain containers)"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n|$)", text)
        reason = detail.group(1) if detail else (text.strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(
            f"{path}: not a readable PyTorch weights file ({type(exc).__name__}: {reason})"
        ) from None
    return _unwrap_state_dict(obj, path)


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    raise DataError(
        f"{path}: no state dict found (expected a mapping of names to tensors, possibly under one of "
        f"{', '.join(_CONTAINER_KEYS)})"
    )


# --------------------------------------------------------------------------- fetching


def default_cache_dir() -> Path:
    """``$REIDFLOW_CACHE_DIR`` or ``$XDG_CACHE_HOME/reidflow/pretrained`` (``~/.cache`` by default)."""
    if os.environ.get("REIDFLOW_CACHE_DIR"):
        return Path(os.environ["REIDFLOW_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "reidflow" / "pretrained"


def redact_url(source: str) -> str:
    """Drop credentials, query and fragment from a URL (signed URLs must never reach logs)."""
    parts = urlsplit(source)
    if parts.scheme not in ("http", "https", "file"):
        return source
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def fetch_weights(
    source: str | os.PathLike, cache_dir: str | os.PathLike | None = None, sha256: str | None = None
) -> Path:
    """Local path as is; ``http(s)://``/``file://`` downloaded once into ``cache_dir`` and reused."""
    source_str = os.fspath(source)
    scheme = urlsplit(source_str).scheme
    if scheme == "":
        path = Path(source_str)
        if not path.is_file():
            raise ConfigError(f"pretrained weights not found: {path}")
        _verify_sha256(path, sha256, delete_on_mismatch=False)
        return path
    if scheme not in ("http", "https", "file"):
        raise ConfigError(
            f"pretrained source {redact_url(source_str)!r}: unsupported scheme {scheme!r} "
            "(expected a local path, file://, http:// or https://)"
        )
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    url_path = urlsplit(source_str).path
    name = os.path.basename(url_path) or "weights"
    cached = cache / f"{hashlib.sha256(redact_url(source_str).encode()).hexdigest()[:16]}-{name}"
    if not cached.is_file():
        _download(source_str, cached)
    _verify_sha256(cached, sha256, delete_on_mismatch=True)
    return cached


def _download(url: str, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    shown = redact_url(url)
    fd, tmp_name = tempfile.mkstemp(dir=destination.parent, prefix=".download-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out, length=1 << 20)
        os.replace(tmp_name, destination)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"cannot download pretrained weights from {shown}: {reason}") from None
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    log.info("downloaded pretrained weights %s -> %s", shown, destination)


def _verify_sha256(path: Path, expected: str | None, delete_on_mismatch: bool) -> None:
    if not expected:
        return
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected.lower().removeprefix("sha256:"):
        if delete_on_mismatch:
            path.unlink(missing_ok=True)
        raise DataError(f"{path}: sha256 {actual} does not match the expected {expected}")
