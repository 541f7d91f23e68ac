"""params.yaml -> typed, validated configuration of one stage.

A stage owns one top-level section of params.yaml (DVC's convention) and declares it as a pydantic
model. ``--set a.b=c`` overrides are applied to the raw mapping before validation, so an override is
validated exactly like the file. Every error names the params file and the dotted key.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from reidflow.errors import ConfigError

T = TypeVar("T", bound=BaseModel)

MAX_YAML_BYTES = 4 * 2**20
MAX_YAML_DEPTH = 64
MAX_YAML_ALIASES = 256
MAX_YAML_NODES = 200_000
"""Bounds of an untrusted YAML document (a params file, a ``--set`` value): size, nesting depth,
number of aliases, and number of nodes after expanding aliases (an alias bomb stays small as text
and as a parse tree, but not once expanded)."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts nesting depth and aliases while composing, before building objects."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise _TooBig(f"more than {MAX_YAML_ALIASES} aliases")
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise _TooBig(f"nested deeper than {MAX_YAML_DEPTH} levels")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _TooBig(Exception):
    pass


def _expanded_size(node: yaml.Node, budget: list[int], memo: dict[int, int]) -> int:
    """Nodes of ``node`` with aliases expanded, stopping once past ``budget[0]``."""
    key = id(node)
    if key in memo:
        size = memo[key]
    else:
        size = 1
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        for child in children:
            size += _expanded_size(child, budget, memo)
            if size > budget[0]:
                break
        memo[key] = size
    if size > budget[0]:
        raise _TooBig(f"more than {budget[0]} values once aliases are expanded")
    return size


def safe_yaml(text: str | bytes, where: str) -> Any:
    """Parse untrusted YAML within the bounds above; a one-line ConfigError naming ``where`` otherwise."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{where}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    if len(text.encode("utf-8", errors="replace")) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_YAML_BYTES} bytes; refusing to parse it")
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, [MAX_YAML_NODES], {})
        return loader.construct_document(node)
    except _TooBig as exc:
        raise ConfigError(f"{where}: refusing YAML {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {_one_line(str(exc))}") from None
    except RecursionError:
        raise ConfigError(f"{where}: refusing YAML nested too deeply") from None
    finally:
        loader.dispose()


def _one_line(text: str) -> str:
    return " ".join(text.split())


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def load_params(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a params YAML file and apply ``key.path=value`` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (expected a YAML mapping of stage sections)")
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_YAML_BYTES} bytes; refusing to parse it")
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the params file ({exc.strerror})") from None
    params = safe_yaml(data, str(path)) or {}
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
    value = safe_yaml(raw, f"--set {override!r}: value") if raw.strip() else ""
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
    """One line: the file, then every invalid dotted key with what was expected (``; ``-separated)."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in (prefix, *err["loc"]))
        got = err.get("input")
        got_text = "" if isinstance(got, dict) else f" (got {_short(got)})"
        parts.append(f"{key}: {_one_line(err['msg'])}{got_text}")
    return f"{source}: invalid section {prefix!r}: " + "; ".join(parts)


def _short(value: Any, limit: int = 80) -> str:
    text = _one_line(repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def params_digest(resolved: dict[str, Any]) -> str:
    """Stable digest of a resolved params section (canonical JSON)."""
    blob = json.dumps(resolved, sort_keys=True, separators=(",", ":"), default=str).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with ``extra`` merged in: nested mappings merge, anything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
