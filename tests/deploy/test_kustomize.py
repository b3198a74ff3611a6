"""The Python kustomize renderer: its semantics on small inputs, and equality with `kubectl kustomize`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .kustomize import KustomizeError, identity, json6902, render, set_image, strategic_merge
from .manifests import of_kind, rendered, targets

TARGETS = targets()


def test_every_target_renders_one_rayservice_with_unique_resources(target: str) -> None:
    resources = rendered(TARGETS[target])
    ids = [identity(r) for r in resources]
    assert len(ids) == len(set(ids)), f"duplicate resources in {target}: {ids}"
    assert len(of_kind(resources, "RayService")) == 1


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl not installed: renderer not cross-checked"
)
def test_renderer_output_equals_kubectl_kustomize(target: str) -> None:
    run = subprocess.run(
        ["kubectl", "kustomize", str(TARGETS[target])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    theirs = {identity(r): r for r in yaml.safe_load_all(run.stdout) if r}
    ours = {identity(r): r for r in rendered(TARGETS[target])}
    assert sorted(ours) == sorted(theirs)
    for key, resource in ours.items():
        assert resource == theirs[key], f"{key} differs from kubectl kustomize"


# --- semantics on small inputs ---------------------------------------------------------------------


def test_strategic_merge_merges_maps_and_named_lists_and_deletes_nulls() -> None:
    target = {
        "a": {"keep": 1, "drop": 2},
        "containers": [{"name": "x", "image": "old", "env": [{"name": "A", "value": "1"}]}],
        "tolerations": [{"key": "k1"}],
    }
    patch = {
        "a": {"drop": None, "new": 3},
        "containers": [{"name": "x", "image": "new"}, {"name": "y", "image": "other"}],
        "tolerations": [{"key": "k2"}],
    }
    assert strategic_merge(target, patch) == {
        "a": {"keep": 1, "new": 3},
        "containers": [
            {"name": "x", "image": "new", "env": [{"name": "A", "value": "1"}]},
            {"name": "y", "image": "other"},
        ],
        "tolerations": [{"key": "k2"}],  # no "name": replaced, as kustomize does
    }


def test_json6902_ops_and_missing_paths() -> None:
    doc = {"spec": {"groups": [{"name": "w", "max": 1, "sel": {"a": "b"}}]}}
    out = json6902(
        doc,
        [
            {"op": "test", "path": "/spec/groups/0/name", "value": "w"},
            {"op": "replace", "path": "/spec/groups/0/max", "value": 4},
            {"op": "remove", "path": "/spec/groups/0/sel"},
            {"op": "add", "path": "/spec/groups/-", "value": {"name": "v"}},
            {"op": "add", "path": "/spec/a~1b", "value": 1},
        ],
    )
    assert out == {"spec": {"groups": [{"name": "w", "max": 4}, {"name": "v"}], "a/b": 1}}
    assert doc["spec"]["groups"][0]["max"] == 1, "input must not be mutated"
    for bad in (
        {"op": "replace", "path": "/spec/groups/3/max", "value": 1},
        {"op": "remove", "path": "/spec/nothing"},
        {"op": "test", "path": "/spec/groups/0/name", "value": "other"},
        {"op": "move", "from": "/spec", "path": "/x"},
    ):
        with pytest.raises(KustomizeError):
            json6902(doc, [bad])


def test_images_transformer_reaches_containers_at_any_depth() -> None:
    resource = {
        "spec": {"deep": {"template": {"spec": {"containers": [{"name": "c", "image": "seg:1-gpu"}]}}}}
    }
    out = set_image(resource, {"name": "seg", "newName": "reg:5000/seg", "newTag": "2"})
    assert out["spec"]["deep"]["template"]["spec"]["containers"][0]["image"] == "reg:5000/seg:2"
    untouched = set_image(resource, {"name": "other", "newTag": "2"})
    assert untouched == resource


def _write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


_CM = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\ndata: {a: '1'}\n"


def test_unsupported_kustomization_fields_are_refused(tmp_path: Path) -> None:
    _write(tmp_path, {"cm.yaml": _CM, "kustomization.yaml": "resources: [cm.yaml]\nnamePrefix: x-\n"})
    with pytest.raises(KustomizeError, match="namePrefix"):
        render(tmp_path)


def test_a_patch_matching_nothing_is_an_error(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "cm.yaml": _CM,
            "p.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: renamed}\ndata: {a: '2'}\n",
            "kustomization.yaml": "resources: [cm.yaml]\npatches: [{path: p.yaml}]\n",
        },
    )
    with pytest.raises(KustomizeError, match="matches no resource"):
        render(tmp_path)


def test_patch_delete_namespace_and_labels(tmp_path: Path) -> None:
    second = _CM.replace("name: cm", "name: gone")
    _write(
        tmp_path,
        {
            "cm.yaml": _CM + "---\n" + second,
            "del.yaml": "$patch: delete\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: gone}\n",
            "kustomization.yaml": (
                "resources: [cm.yaml]\npatches: [{path: del.yaml}]\nnamespace: ns\n"
                "labels: [{pairs: {team: seg}, includeSelectors: false}]\n"
            ),
        },
    )
    (only,) = render(tmp_path)
    assert only["metadata"] == {"name": "cm", "namespace": "ns", "labels": {"team": "seg"}}
