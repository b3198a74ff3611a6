"""serveConfigV2: equal to deploy/serve_config.yaml (plus each overlay's documented overrides), valid
for Ray Serve with no unknown key at any level, and application args valid for AppSettings."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from .manifests import (
    KUSTOMIZE_ROOT,
    SERVE_CONFIG,
    drift_problems,
    expected_serve_config,
    load_yaml,
    overlays,
    replica_demands,
    serve_config_of,
    serve_config_problems,
    sync_module,
    targets,
)

TARGETS = targets()


def test_serve_config_v2_is_serve_config_yaml_plus_documented_overrides(
    rayservice: dict[str, Any], target: str
) -> None:
    overlay = overlays().get(target)
    expected = expected_serve_config(overlay)
    if overlay is None or not (overlay / "serve-overrides.yaml").exists():
        assert expected == load_yaml(SERVE_CONFIG), "no overrides: must be serve_config.yaml itself"
    assert drift_problems(serve_config_of(rayservice), expected) == []


def test_generated_manifests_are_up_to_date() -> None:
    stale = sync_module().stale_files()
    assert stale == [], f"run python deploy/kubernetes/sync_serve_config.py (stale: {stale})"


def test_serve_config_file_validates() -> None:
    assert serve_config_problems(load_yaml(SERVE_CONFIG)) == []


def test_rendered_serve_config_validates(rayservice: dict[str, Any]) -> None:
    assert serve_config_problems(serve_config_of(rayservice)) == []


def test_deployment_overrides_name_existing_deployments(rayservice: dict[str, Any], repository: Any) -> None:
    # Ray refuses an override for a deployment the app does not have, but only at deploy time.
    config = serve_config_of(rayservice)
    plain = copy.deepcopy(config)
    for app in plain["applications"]:
        app.pop("deployments", None)
    known = set(replica_demands(plain, repository))
    for app in config["applications"]:
        for override in app.get("deployments", []):
            assert override["name"] in known, f"no deployment {override['name']!r}; known: {sorted(known)}"


# --- planted mistakes ------------------------------------------------------------------------------


def _config() -> dict[str, Any]:
    config = load_yaml(SERVE_CONFIG)
    config["applications"][0]["deployments"] = [
        {
            "name": "Segmenter-unet-shapes",
            "ray_actor_options": {"num_cpus": 1, "num_gpus": 0.25},
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 2},
        }
    ]
    assert serve_config_problems(config) == []
    return config


@pytest.mark.parametrize(
    ("plant", "needle"),
    [
        (lambda c: c["applications"][0]["deployments"][0]["ray_actor_options"].update(num_gpu=1), "num_gpu"),
        (
            lambda c: c["applications"][0]["deployments"][0]["autoscaling_config"].update(min_replicaz=1),
            "min_replicaz",
        ),
        (lambda c: c["applications"][0]["deployments"][0].update(num_replicaz=3), "num_replicaz"),
        (lambda c: c["applications"][0].update(route_prefx="/v2"), "route_prefx"),
        (lambda c: c["http_options"].update(request_timeout=5), "request_timeout"),
        (lambda c: c["grpc_options"].update(grpc_servicer_function=[]), "grpc_servicer_function"),
        (lambda c: c.update(proxy_locaton="HeadOnly"), "proxy_locaton"),
    ],
    ids=["num_gpu", "min_replicaz", "num_replicaz", "route_prefx", "request_timeout", "servicer", "proxy"],
)
def test_planted_unknown_serve_keys_are_caught(plant: Any, needle: str) -> None:
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    config = _config()
    plant(config)
    try:  # Ray itself lets these through: this is why the strict check exists
        ServeDeploySchema.model_validate(config)
    except ValidationError:
        pytest.fail("Ray started rejecting this typo; the planted mistake no longer shows the gap")
    assert any(needle in p and "unknown key" in p for p in serve_config_problems(config))


def test_planted_wrong_value_is_caught_by_ray_schema() -> None:
    config = _config()
    config["applications"][0]["deployments"][0]["num_replicas"] = 2  # with autoscaling_config
    assert any("num_replicas" in p for p in serve_config_problems(config))


def test_planted_unknown_app_arg_is_caught() -> None:
    config = _config()
    config["applications"][0]["args"]["limits"]["max_body_byte"] = 1
    assert any("max_body_byte" in p and "unknown key" in p for p in serve_config_problems(config))


def test_planted_drift_from_serve_config_is_caught(rayservice: dict[str, Any]) -> None:
    config = serve_config_of(rayservice)
    config["applications"][0]["args"]["limits"]["max_body_bytes"] = 1
    config["http_options"].pop("request_timeout_s")
    problems = drift_problems(config, load_yaml(SERVE_CONFIG))
    assert any("max_body_bytes" in p for p in problems)
    assert any("request_timeout_s" in p and "missing" in p for p in problems)


def test_planted_drift_makes_the_sync_check_fail(tmp_path: Path) -> None:
    # A copy of deploy/ where serve_config.yaml changed but the manifests were not regenerated.
    root = tmp_path / "deploy" / "kubernetes"
    shutil.copytree(KUSTOMIZE_ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    config = load_yaml(SERVE_CONFIG)
    config["applications"][0]["args"]["limits"]["max_body_bytes"] = 1024
    (root.parent / "serve_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    sync = sync_module()
    stale = sync.stale_files(root)
    assert root / "base" / "rayservice.yaml" in stale
    assert all(p.name in ("rayservice.yaml", "patch-serve-config.yaml") for p in stale)
    for path, text in sync.expected_files(root).items():
        path.write_text(text)
    assert sync.stale_files(root) == []


# --- the sync script's pieces ----------------------------------------------------------------------


def test_merge_matches_named_items_and_removes_nulls() -> None:
    merge = sync_module().merge
    base = {"a": 1, "apps": [{"name": "x", "args": {"k": 1, "drop": 2}}], "plain": [1, 2]}
    overrides = {"apps": [{"name": "x", "args": {"drop": None}}, {"name": "y"}], "plain": [3]}
    assert merge(base, overrides) == {
        "a": 1,
        "apps": [{"name": "x", "args": {"k": 1}}, {"name": "y"}],
        "plain": [3],
    }
    assert base["apps"][0]["args"] == {"k": 1, "drop": 2}, "inputs must not be mutated"


def test_replace_block_keeps_the_rest_of_the_manifest() -> None:
    manifest = "# head\nspec:\n  a: 1\n  serveConfigV2: |\n    old: 1\n\n    older: 2\n  # after\n  b: 2\n"
    out = sync_module().replace_block(manifest, "# kept comment\nnew:\n  - 1\n")
    expected = "# head\nspec:\n  a: 1\n  serveConfigV2: |\n    # kept comment\n    new:\n      - 1\n"
    assert out == expected + "  # after\n  b: 2\n"
    assert yaml.safe_load(yaml.safe_load(out)["spec"]["serveConfigV2"]) == {"new": [1]}
