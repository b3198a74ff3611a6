"""A small renderer for the subset of kustomize that deploy/kubernetes uses.

CI machines may lack kubectl, so the manifests are rendered here in Python. Supported kustomization
fields: ``resources`` (files and folders), ``patches`` (strategic-merge, including a top-level
``$patch: delete``, or JSON 6902 with ``target``), ``namespace``, ``labels`` (with
``includeSelectors: false``) and ``images``. Anything else (``commonLabels`` too, which would
also rewrite selectors) is refused rather than ignored, so the renderer never silently differs from
kustomize; where kubectl exists, tests/deploy/test_kustomize.py checks that its output equals
``kubectl kustomize``'s.

Transformers run in kustomize's order: patches, namespace, labels, images.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

SUPPORTED_FIELDS = frozenset({"apiVersion", "kind", "resources", "patches", "namespace", "labels", "images"})
_KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


class KustomizeError(ValueError):
    """The kustomization is invalid, or uses something this renderer does not implement."""


def render(directory: Path) -> list[Resource]:
    """The resources ``kubectl kustomize directory`` would print, as dicts (in input order)."""
    directory = Path(directory)
    kustomization = load_kustomization(directory)
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        resources.extend(render(path) if path.is_dir() else load_documents(path))
    for patch in kustomization.get("patches", []):
        resources = apply_patch(resources, patch, directory)
    if "namespace" in kustomization:
        resources = [set_namespace(r, kustomization["namespace"]) for r in resources]
    for label_set in kustomization.get("labels", []):
        if label_set.get("includeSelectors") or label_set.get("includeTemplates"):
            raise KustomizeError("labels: only includeSelectors/includeTemplates false are supported")
        resources = [add_labels(r, label_set.get("pairs", {})) for r in resources]
    for image in kustomization.get("images", []):
        resources = [set_image(r, image) for r in resources]
    return resources


def load_kustomization(directory: Path) -> dict[str, Any]:
    for name in _KUSTOMIZATION_FILES:
        path = directory / name
        if path.exists():
            data = yaml.safe_load(path.read_text()) or {}
            unknown = sorted(set(data) - SUPPORTED_FIELDS)
            if unknown:
                raise KustomizeError(f"{path}: fields not supported by this renderer: {unknown}")
            return data
    raise KustomizeError(f"{directory}: no kustomization.yaml")


def load_documents(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(Path(path).read_text()) if doc]


def group_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def identity(resource: Resource) -> tuple[str, str, str, str]:
    """What kustomize identifies a resource by: apiVersion, kind, namespace, name."""
    meta = resource.get("metadata", {})
    return (resource["apiVersion"], resource["kind"], meta.get("namespace", ""), meta["name"])


# --- patches ---------------------------------------------------------------------------------------


def apply_patch(resources: list[Resource], patch: dict[str, Any], directory: Path) -> list[Resource]:
    unknown = sorted(set(patch) - {"path", "patch", "target"})
    if unknown:
        raise KustomizeError(f"patch fields not supported: {unknown}")
    text = (directory / patch["path"]).read_text() if "path" in patch else patch["patch"]
    body = yaml.safe_load(text)
    if isinstance(body, list):
        if "target" not in patch:
            raise KustomizeError("a JSON 6902 patch needs a target")
        _require_match(resources, patch["target"])
        return [json6902(r, body) if matches(r, patch["target"]) else r for r in resources]
    target = patch.get("target") or _target_of(body)
    _require_match(resources, target)
    directive = body.pop("$patch", None)
    if directive == "delete":
        return [r for r in resources if not matches(r, target)]
    if directive is not None:
        raise KustomizeError(f"$patch: {directive} is not supported")
    return [strategic_merge(r, _without_identity(body)) if matches(r, target) else r for r in resources]


def _require_match(resources: list[Resource], target: dict[str, str]) -> None:
    # kustomize lets a patch that matches nothing pass; here it is an error (a renamed resource
    # would otherwise leave an overlay silently unpatched).
    if not any(matches(r, target) for r in resources):
        raise KustomizeError(f"patch target {target} matches no resource")


def _target_of(body: Resource) -> dict[str, str]:
    group, version = group_version(body["apiVersion"])
    target = {"group": group, "version": version, "kind": body["kind"], "name": body["metadata"]["name"]}
    if "namespace" in body["metadata"]:
        target["namespace"] = body["metadata"]["namespace"]
    return target


def _without_identity(body: Resource) -> Resource:
    # apiVersion/kind/name select the target; merging them again would be a no-op.
    body = copy.deepcopy(body)
    for key in ("apiVersion", "kind"):
        body.pop(key, None)
    body["metadata"].pop("name", None)
    if not body["metadata"]:
        del body["metadata"]
    return body


def matches(resource: Resource, target: dict[str, str]) -> bool:
    unknown = sorted(set(target) - {"group", "version", "kind", "name", "namespace"})
    if unknown:
        raise KustomizeError(f"patch target fields not supported: {unknown}")
    group, version = group_version(resource["apiVersion"])
    actual = {
        "group": group,
        "version": version,
        "kind": resource["kind"],
        "name": resource["metadata"]["name"],
        "namespace": resource["metadata"].get("namespace", ""),
    }
    # kustomize reads target names as anchored regular expressions.
    return all(re.fullmatch(str(want), actual[key]) for key, want in target.items())


def strategic_merge(target: Any, patch: Any) -> Any:
    """kustomize's schema-less strategic merge (what it does for custom resources such as RayService).

    Mappings merge recursively and ``null`` deletes a key; lists whose items are all mappings with a
    ``name`` merge item by item on it (kyaml's inferred associative key); other lists are replaced.
    """
    if isinstance(target, dict) and isinstance(patch, dict):
        if "$patch" in patch:
            raise KustomizeError(f"$patch directive {patch['$patch']!r} inside a resource is not supported")
        out = dict(target)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value)
            else:
                out[key] = _drop_nulls(value)
        return out
    if isinstance(target, list) and isinstance(patch, list) and _associative(target + patch):
        out = list(target)
        position = {item["name"]: i for i, item in enumerate(out)}
        for item in patch:
            if item["name"] in position:
                out[position[item["name"]]] = strategic_merge(out[position[item["name"]]], item)
            else:
                out.append(_drop_nulls(item))
        return out
    return _drop_nulls(patch)


def _associative(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def json6902(resource: Resource, operations: Iterable[dict[str, Any]]) -> Resource:
    """RFC 6902 ``add``, ``remove``, ``replace`` and ``test``; a missing path is an error."""
    doc = copy.deepcopy(resource)
    for op in operations:
        kind, path = op["op"], op["path"]
        parent, last = _resolve_parent(doc, path)
        if kind == "test":
            if _child(parent, last, path) != op["value"]:
                raise KustomizeError(
                    f"test failed at {path}: {_child(parent, last, path)!r} != {op['value']!r}"
                )
        elif kind == "remove":
            _child(parent, last, path)
            del parent[_key(parent, last, path)]
        elif kind == "replace":
            _child(parent, last, path)
            parent[_key(parent, last, path)] = copy.deepcopy(op["value"])
        elif kind == "add":
            if isinstance(parent, list):
                index = len(parent) if last == "-" else _key(parent, last, path, allow_end=True)
                parent.insert(index, copy.deepcopy(op["value"]))
            else:
                parent[last] = copy.deepcopy(op["value"])
        else:
            raise KustomizeError(f"JSON 6902 op {kind!r} is not supported")
    return doc


def _tokens(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer must start with '/': {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _resolve_parent(doc: Any, path: str) -> tuple[Any, str]:
    *head, last = _tokens(path)
    node = doc
    for i, token in enumerate(head):
        node = _child(node, token, "/" + "/".join(head[: i + 1]))
    return node, last


def _key(node: Any, token: str, path: str, allow_end: bool = False) -> Any:
    if isinstance(node, list):
        if not token.isdigit() or int(token) > len(node) - (0 if allow_end else 1):
            raise KustomizeError(f"no list item {token!r} at {path}")
        return int(token)
    return token


def _child(node: Any, token: str, path: str) -> Any:
    if isinstance(node, dict):
        if token not in node:
            raise KustomizeError(f"path {path} does not exist")
        return node[token]
    if isinstance(node, list):
        return node[_key(node, token, path)]
    raise KustomizeError(f"path {path} goes through a scalar")


# --- namespace, labels, images ---------------------------------------------------------------------


def set_namespace(resource: Resource, namespace: str) -> Resource:
    # Every kind in deploy/kubernetes is namespaced; cluster-scoped kinds would need a list here.
    out = copy.deepcopy(resource)
    out["metadata"]["namespace"] = namespace
    return out


def add_labels(resource: Resource, pairs: dict[str, str]) -> Resource:
    out = copy.deepcopy(resource)
    out["metadata"]["labels"] = {**out["metadata"].get("labels", {}), **pairs}
    return out


def set_image(resource: Resource, image: dict[str, str]) -> Resource:
    """kustomize's image transformer: every ``containers``/``initContainers`` list, at any depth."""
    unknown = sorted(set(image) - {"name", "newName", "newTag", "digest"})
    if unknown:
        raise KustomizeError(f"images fields not supported: {unknown}")
    out = copy.deepcopy(resource)
    for container in _containers(out):
        name, tag = split_image(container.get("image", ""))
        if name != image["name"]:
            continue
        name = image.get("newName", name)
        if "digest" in image:
            container["image"] = f"{name}@{image['digest']}"
        else:
            new_tag = image.get("newTag", tag)
            container["image"] = f"{name}:{new_tag}" if new_tag else name
    return out


def split_image(image: str) -> tuple[str, str]:
    """``registry:5000/name:tag`` → (``registry:5000/name``, ``tag``); a digest is kept in the name."""
    if "@" in image:
        return image, ""
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return image, ""
    return name, tag


def _containers(node: Any) -> Iterable[dict[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)
