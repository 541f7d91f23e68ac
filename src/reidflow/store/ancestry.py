"""Walk, verify and draw the ancestry of an artifact through the ``inputs`` of its lineage records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reidflow.errors import ArtifactError
from reidflow.store.artifacts import open_input
from reidflow.store.digests import tree_digests
from reidflow.store.lineage import LINEAGE_FILE
from reidflow.store.uri import parse_uri


@dataclass
class Node:
    """One artifact (or raw-data input) in an ancestry tree."""

    name: str
    uri: str
    digest: str
    record: dict[str, Any] | None
    dvc_md5: str | None = None
    parents: list[Node] = field(default_factory=list)

    @property
    def label(self) -> str:
        if self.record is None:
            return f"raw data {self.uri}"
        return f"{self.record.get('stage')} [{self.record['artifact'].get('kind')}] {self.uri}"


def _resolve(uri: str, base: Path | None) -> str:
    parsed = parse_uri(uri)
    if parsed.is_s3 or base is None or parsed.local_path.is_absolute():
        return uri
    return str(base / parsed.local_path)


def load_tree(
    uri: str, name: str = "artifact", base: Path | None = None, _seen: dict[str, Node] | None = None
) -> Node:
    """Ancestry of ``uri``; relative input URIs are resolved against ``base`` (the directory the stages ran in)."""
    seen = {} if _seen is None else _seen
    resolved = _resolve(uri, base)
    if resolved in seen:
        return seen[resolved]
    art = open_input(name, resolved, require_artifact=False)
    node = Node(name, uri, art.digest, art.lineage)
    seen[resolved] = node
    if art.lineage is None:
        ref = art.ref()
        node.dvc_md5 = ref.extra.get("dvc_md5")
        return node
    for inp in art.lineage.get("inputs", []):
        parent = load_tree(inp["uri"], inp["name"], base, seen)
        parent.dvc_md5 = parent.dvc_md5 or inp.get("dvc_md5")
        if inp.get("within") and parent.record is None and not parent.parents:
            parent.parents.append(load_tree(inp["within"], "written by", base, seen))
        node.parents.append(parent)
    return node


def verify(uri: str, base: Path | None = None) -> list[str]:
    """Re-hash the artifact and every ancestor; raise ArtifactError naming the first mismatch.

    Checked for each artifact: every file key is a safe relative path, every listed file exists with
    its recorded size and SHA-256, no unlisted file is present (local), the file list gives the
    artifact digest, the record itself (minus its volatile fields) gives its ``record_digest``, and
    both digests equal what its child pinned. A raw-data input is re-hashed and, when it changed,
    the file is named from the child's ``raw_inputs.json``.
    """
    checked: list[str] = []
    _verify(uri, "artifact", None, base, checked, set())
    return checked


def _verify(
    uri: str,
    name: str,
    pinned: dict[str, Any] | None,
    base: Path | None,
    checked: list[str],
    seen: set[str],
    child: Any = None,
) -> None:
    resolved = _resolve(uri, base)
    if resolved in seen:
        return
    seen.add(resolved)
    expected = pinned.get("digest") if pinned else None
    art = open_input(name, resolved, require_artifact=False, fresh=True)
    if art.lineage is None:
        if expected is not None and art.digest != expected:
            raise ArtifactError(f"{uri}: raw input {name!r} changed: {_raw_change(art, name, child)}")
        checked.append(uri)
        return
    files = art.lineage["artifact"]["files"]
    extra = (
        sorted(set(tree_digests(art.path, exclude=frozenset({LINEAGE_FILE}))) - set(files))
        if art.path.is_dir()
        else []
    )
    if extra and not parse_uri(resolved).is_s3:
        raise ArtifactError(f"{uri}: file {extra[0]} is not listed in {LINEAGE_FILE}")
    stored = art.lineage["artifact"].get("record_digest")
    if stored is not None and stored != art.record_digest:
        raise ArtifactError(
            f"{uri}: {LINEAGE_FILE} was edited after it was written: its fields give record digest "
            f"{art.record_digest}, it records {stored}"
        )
    if expected is not None and art.digest != expected:
        raise ArtifactError(
            f"{uri}: artifact {name!r} was replaced: digest {art.digest}, its child recorded {expected}"
        )
    pinned_record = pinned.get("record_digest") if pinned else None
    if pinned_record is not None and art.record_digest != pinned_record:
        raise ArtifactError(
            f"{uri}: {LINEAGE_FILE} of artifact {name!r} changed since its child read it: record digest "
            f"{art.record_digest}, its child recorded {pinned_record}"
        )
    checked.append(uri)
    for inp in art.lineage.get("inputs", []):
        if inp.get("within"):  # the artifact that wrote a raw input first: it names a changed file
            _verify(
                inp["within"], "written by", {"digest": inp.get("within_digest")}, base, checked, seen, art
            )
        _verify(inp["uri"], inp["name"], inp, base, checked, seen, art)


def _raw_change(art: Any, name: str, child: Any) -> str:
    """Which file of a raw input differs from what the child read (its ``raw_inputs.json``)."""
    import json

    from reidflow.store.artifacts import RAW_INPUTS_FILE

    summary = f"digest {art.digest}"
    recorded_file = child.path / RAW_INPUTS_FILE if child is not None else None
    if recorded_file is None or not recorded_file.is_file():
        return summary
    try:
        recorded = json.loads(recorded_file.read_text()).get(name)
    except (ValueError, AttributeError):
        return summary
    if not isinstance(recorded, dict) or art.raw_files is None:
        return summary
    now = art.raw_files
    for rel in sorted(set(recorded) | set(now)):
        if rel not in now:
            return f"file {rel} is missing"
        if rel not in recorded:
            return f"file {rel} was added"
        if recorded[rel] != now[rel]:
            return f"file {rel} changed: sha256 {now[rel]}, lineage recorded {recorded[rel]}"
    return summary


def render_text(node: Node) -> list[str]:
    """The ancestry as a tree; an artifact reached a second time (a shared parent) is named, not repeated."""
    return _render(node, "", True, True, set())


def _render(node: Node, indent: str, last: bool, top: bool, shown: set[int]) -> list[str]:
    branch = "" if top else ("└── " if last else "├── ")
    if id(node) in shown:
        return [f"{indent}{branch}{node.name}: {node.label} (shown above)"]
    shown.add(id(node))
    lines = [f"{indent}{branch}{node.name}: {node.label}"]
    child_indent = indent + ("" if top else ("    " if last else "│   "))
    detail_indent = "    " if top else child_indent + ("│   " if node.parents else "    ")
    lines += [detail_indent + d for d in _details(node)]
    for i, parent in enumerate(node.parents):
        lines += _render(parent, child_indent, i == len(node.parents) - 1, False, shown)
    return lines


def _details(node: Node) -> list[str]:
    details = [f"digest {node.digest}"]
    if node.record:
        rec = node.record
        code = rec.get("code", {})
        runtime = rec.get("runtime", {})
        dirty = " (dirty)" if code.get("git_dirty") else ""
        details.append(f"code {code.get('version')} @ {code.get('git_commit') or 'unknown'}{dirty}")
        details.append(f"params {rec.get('params_digest')}  seed {rec.get('seed')}")
        details.append(
            f"ran {rec.get('started')} .. {rec.get('finished')} via {runtime.get('orchestrator')}"
            + (f" run {runtime['run_id']}" if runtime.get("run_id") else "")
            + (f" image {runtime['image']}" if runtime.get("image") else "")
        )
    if node.dvc_md5:
        details.append(f"data.dvc md5 {node.dvc_md5}")
    return details


def render_graph(node: Node, fmt: str) -> str:
    ids: dict[int, str] = {}
    nodes: list[Node] = []

    def visit(n: Node) -> None:
        if id(n) in ids:
            return
        ids[id(n)] = f"n{len(ids)}"
        nodes.append(n)
        for p in n.parents:
            visit(p)

    visit(node)
    edges = [(ids[id(p)], ids[id(n)], p.name) for n in nodes for p in n.parents]
    short = {ids[id(n)]: f"{n.label}\\n{n.digest[:19]}" for n in nodes}
    if fmt == "mermaid":
        out = ["flowchart LR"]
        out += [f'  {nid}["{text.replace(chr(34), chr(39))}"]' for nid, text in short.items()]
        out += [f"  {a} -->|{label}| {b}" for a, b, label in edges]
        return "\n".join(out) + "\n"
    if fmt == "dot":
        out = ["digraph lineage {", "  rankdir=LR;", "  node [shape=box];"]
        out += [f'  {nid} [label="{text.replace(chr(34), chr(39))}"];' for nid, text in short.items()]
        out += [f'  {a} -> {b} [label="{label}"];' for a, b, label in edges]
        return "\n".join(out) + "\n}\n"
    raise ArtifactError(f"unknown graph format {fmt!r}: expected mermaid or dot")
