"""params.yaml -> typed, validated configuration of one stage.

A stage owns one top-level section of params.yaml (DVC's convention) and declares it as a pydantic
model. ``--set a.b=c`` overrides are applied to the raw mapping before validation, so an override is
validated exactly like the file. Every error names the params file and the dotted key.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from reidflow.errors import ConfigError

T = TypeVar("T", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def load_params(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a params YAML file and apply ``key.path=value`` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (expected a YAML mapping of stage sections)")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(params, dict):
        raise ConfigError(
            f"{path}: expected a mapping of stage sections at the top level, got {type(params).__name__}"
        )
    for override in overrides:
        apply_override(params, override, source=str(path))
    return params


def apply_override(params: dict[str, Any], override: str, source: str = "params") -> None:
    """Apply one ``a.b.c=value`` override in place; intermediate mappings must exist or are created."""
    if "=" not in override:
        raise ConfigError(f"--set {override!r}: expected KEY=VALUE with a dotted key, e.g. pretrain.lr=0.01")
    key, raw = override.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {override!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {override!r}: value is not valid YAML: {exc}") from exc
    node: Any = params
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, override)
            continue
        if part not in node:
            node[part] = {}
        node = node[part]
        if not isinstance(node, (dict, list)):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"--set {override!r}: {source} key {where!r} is a value, not a mapping")
    if isinstance(node, list):
        node[_list_index(node, parts[-1], override)] = value
    else:
        node[parts[-1]] = value


def _list_index(node: list[Any], part: str, override: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {override!r}: {part!r} is not an index of a list of length {len(node)}")
    return int(part)


def _list_item(node: list[Any], part: str, override: str) -> Any:
    return node[_list_index(node, part, override)]


def section(params: dict[str, Any], name: str, model: type[T], source: str = "params.yaml") -> T:
    """Validate section ``name`` of ``params`` as ``model``; errors name the file and dotted keys."""
    raw = params.get(name)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: section {name!r} must be a mapping, got {type(raw).__name__}")
    try:
        return model.model_validate(copy.deepcopy(raw))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, name)) from None


def validate_as(model: type[T], data: Any, where: str) -> T:
    """``model.model_validate(data)`` with errors as one ConfigError naming ``where.<dotted key>``."""
    try:
        return model.model_validate(dict(data) if isinstance(data, dict) else data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "params", where)) from None


def format_validation_error(exc: ValidationError, source: str, prefix: str) -> str:
    lines = [f"{source}: invalid section {prefix!r}:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in (prefix, *err["loc"]))
        got = err.get("input")
        got_text = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {key}: {err['msg']}{got_text}")
    return "\n".join(lines)


def params_digest(resolved: dict[str, Any]) -> str:
    """Stable digest of a resolved params section (canonical JSON)."""
    blob = json.dumps(resolved, sort_keys=True, separators=(",", ":"), default=str).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()
