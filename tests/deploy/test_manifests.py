"""Every rendered kustomization validates against the Kubernetes and KubeRay schemas and its
cross-references hold; each check is shown to catch a planted mistake."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from .manifests import (
    GPU,
    GRPC_SIZE_ENV,
    KUBERNETES_VERSION,
    PROJECT_ROOT,
    capacity_problems,
    core_problems,
    embedded_problems,
    env_problems,
    gpu_scheduling_problems,
    has_kubernetes_schema,
    lifecycle_problems,
    load_yaml,
    of_kind,
    pod_templates,
    podmonitor_problems,
    port_problems,
    ray_container,
    rayservice_problems,
    rendered,
    replica_demands,
    resource_problems,
    selector_problems,
    serve_config_of,
    targets,
)

# Kinds without a Kubernetes schema, checked by their own layer instead (RayService: the KubeRay CRD;
# PodMonitor: selector and port cross-checks, as no Prometheus Operator schema is available offline).
CUSTOM_KINDS = {"RayService", "PodMonitor"}

TARGETS = targets()


def test_kubernetes_version_is_stated() -> None:
    assert re.fullmatch(r"1\.\d+\.\d+", KUBERNETES_VERSION)


def test_core_resources_validate_against_kubernetes(resources: list[dict[str, Any]]) -> None:
    core = [r for r in resources if r["kind"] not in CUSTOM_KINDS]
    assert core, "expected core resources (PodDisruptionBudget)"
    for resource in core:
        assert has_kubernetes_schema(resource), f"no Kubernetes schema for {resource['kind']}"
        assert core_problems(resource) == []


def test_pod_templates_and_serve_service_validate(rayservice: dict[str, Any]) -> None:
    assert embedded_problems(rayservice) == []


def test_rayservice_validates_against_kuberay_crd(
    rayservice: dict[str, Any], rayservice_schema: Path
) -> None:
    assert rayservice_problems(rayservice, rayservice_schema) == []


def test_cross_references_hold(rayservice: dict[str, Any]) -> None:
    config = serve_config_of(rayservice)
    assert port_problems(rayservice, config) == []
    assert env_problems(rayservice, config) == []
    assert lifecycle_problems(rayservice, config) == []
    assert resource_problems(rayservice) == []
    assert gpu_scheduling_problems(rayservice) == []


def test_monitoring_and_disruption_budget_select_ray_pods(resources: list[dict[str, Any]]) -> None:
    (rayservice,) = of_kind(resources, "RayService")
    for podmonitor in of_kind(resources, "PodMonitor"):
        assert podmonitor_problems(podmonitor, rayservice) == []
    for pdb in of_kind(resources, "PodDisruptionBudget"):
        assert selector_problems(pdb["metadata"]["name"], pdb["spec"]["selector"], rayservice) == []


def test_replicas_fit_the_workers(rayservice: dict[str, Any], repository: Any) -> None:
    assert capacity_problems(rayservice, serve_config_of(rayservice), repository) == []


def test_ray_version_matches_the_pinned_ray(rayservice: dict[str, Any]) -> None:
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text()
    pinned = re.search(r'"ray\[serve\]==([^"]+)"', pyproject)
    assert pinned, "pyproject.toml no longer pins ray[serve]"
    assert rayservice["spec"]["rayClusterConfig"]["rayVersion"] == pinned.group(1)


def test_working_dir_holds_the_model_repository(rayservice: dict[str, Any]) -> None:
    config = serve_config_of(rayservice)
    for template in pod_templates(rayservice).values():
        assert ray_container(template).get("workingDir") == "/app"
    for app in config["applications"]:
        repository = app.get("args", {}).get("repository", "models/repository.yaml")
        assert not repository.startswith("/"), "the image copies models/ to /app/models: keep it relative"
        assert (PROJECT_ROOT / repository).exists()


# --- overlay-specific ------------------------------------------------------------------------------


def _overlay(name: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(rendered(TARGETS[name])))


def test_dev_cpu_overlay_needs_no_gpu_and_no_prometheus() -> None:
    resources = _overlay("dev-cpu")
    assert GPU not in repr(resources)
    assert of_kind(resources, "PodMonitor") == []
    (rayservice,) = of_kind(resources, "RayService")
    groups = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert [(g["minReplicas"], g["maxReplicas"]) for g in groups] == [(1, 1)]
    images = {ray_container(t)["image"] for t in pod_templates(rayservice).values()}
    assert images == {"segserve:0.1.0"}, "dev-cpu runs the CPU image"


def test_gpu_overlay_shares_gpus_and_autoscales(repository: Any) -> None:
    (rayservice,) = of_kind(_overlay("gpu"), "RayService")
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    (group,) = cluster["workerGroupSpecs"]
    assert group["maxReplicas"] > group["minReplicas"] >= 1
    config = serve_config_of(rayservice)
    demands = replica_demands(config, repository)
    segmenters = {name: d for name, d in demands.items() if name.startswith("Segmenter-")}
    assert segmenters and all(0 < gpus < 1 for _, _, gpus in segmenters.values()), segmenters
    overrides = {d["name"]: d for a in config["applications"] for d in a.get("deployments", [])}
    for name in segmenters:
        scaling = overrides[name]["autoscaling_config"]
        assert scaling["max_replicas"] > scaling["min_replicas"] >= 1


# --- planted mistakes ------------------------------------------------------------------------------


def test_planted_wrong_type_in_a_service_is_caught(rayservice: dict[str, Any]) -> None:
    service = {"apiVersion": "v1", "kind": "Service", **copy.deepcopy(rayservice["spec"]["serveService"])}
    assert core_problems(service) == []
    service["spec"]["ports"][0]["port"] = "eighty"
    assert any("eighty" in p for p in core_problems(service))
    rayservice["spec"]["serveService"]["spec"]["ports"][0]["port"] = "eighty"
    assert any("serveService" in p and "eighty" in p for p in embedded_problems(rayservice))


def test_planted_bad_fields_in_a_pod_template_are_caught(rayservice: dict[str, Any]) -> None:
    container = ray_container(rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"])
    container["ports"][0]["containerPort"] = "sixty-three"
    container["imagePullPolicie"] = "Always"
    problems = embedded_problems(rayservice)
    assert any("sixty-three" in p for p in problems)
    assert any("imagePullPolicie" in p for p in problems)


def test_planted_bad_field_in_the_rayservice_is_caught(
    rayservice: dict[str, Any], rayservice_schema: Path
) -> None:
    spec = rayservice["spec"]
    spec["rayClusterConfg"] = spec.pop("rayClusterConfig")
    problems = rayservice_problems(rayservice, rayservice_schema)
    assert any("rayClusterConfg" in p for p in problems)
    rayservice["spce"] = rayservice.pop("spec")
    assert any("spce" in p for p in rayservice_problems(rayservice, rayservice_schema))


def test_planted_wrong_type_in_a_core_resource_is_caught(resources: list[dict[str, Any]]) -> None:
    (pdb,) = of_kind(resources, "PodDisruptionBudget")
    pdb["spec"]["selector"]["matchLabels"] = ["not", "a", "map"]
    assert core_problems(pdb) != []


def test_planted_cross_reference_mistakes_are_caught(rayservice: dict[str, Any]) -> None:
    config = serve_config_of(rayservice)
    cluster = rayservice["spec"]["rayClusterConfig"]
    head = ray_container(cluster["headGroupSpec"]["template"])
    worker_template = cluster["workerGroupSpecs"][0]["template"]
    worker = ray_container(worker_template)

    grpc_port = next(p for p in worker["ports"] if p["name"] == "serve-grpc")
    grpc_port["name"] = "grpc"
    assert any("serve-grpc" in p for p in port_problems(rayservice, config))

    worker["env"] = [e for e in worker["env"] if e["name"] != GRPC_SIZE_ENV]
    head["env"] = [{"name": GRPC_SIZE_ENV, "value": "1024"}]
    problems = env_problems(rayservice, config)
    assert any("not set" in p for p in problems) and any("below" in p for p in problems)

    worker_template["spec"]["terminationGracePeriodSeconds"] = 10
    head["readinessProbe"] = {"tcpSocket": {"port": 8000}}
    cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] = "4"
    problems = lifecycle_problems(rayservice, config)
    assert any("terminationGracePeriodSeconds" in p for p in problems)
    assert any("readinessProbe" in p for p in problems)
    assert any("num-cpus" in p for p in problems)

    worker["resources"] = {"limits": {"cpu": "2", GPU: "1"}}
    worker_template["spec"].pop("tolerations", None)
    assert any("no requests.memory" in p for p in resource_problems(rayservice))
    assert any("taint" in p for p in gpu_scheduling_problems(rayservice))


def test_planted_podmonitor_mistakes_are_caught(resources: list[dict[str, Any]]) -> None:
    (rayservice,) = of_kind(resources, "RayService")
    podmonitor = load_yaml(PROJECT_ROOT / "deploy/kubernetes/base/podmonitor.yaml")
    podmonitor["spec"]["podMetricsEndpoints"][0]["port"] = "metric"
    assert any("'metric'" in p for p in podmonitor_problems(podmonitor, rayservice))
    podmonitor["spec"]["selector"]["matchLabels"] = {"app.kubernetes.io/part-of": "segserv"}
    assert any("selects none" in p for p in podmonitor_problems(podmonitor, rayservice))


def test_planted_capacity_mistake_is_caught(rayservice: dict[str, Any], repository: Any) -> None:
    config = serve_config_of(rayservice)
    config["applications"][0]["deployments"] = [
        {"name": "Segmenter-unet-shapes", "ray_actor_options": {"num_cpus": 64, "num_gpus": 2}}
    ]
    problems = capacity_problems(rayservice, config, repository)
    assert any("fits no worker pod" in p for p in problems)
