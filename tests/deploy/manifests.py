"""Offline checks of the Kubernetes manifests: reusable, pure functions that return a list of problems.

Layers, each one what the layer before cannot see:

* core Kubernetes resources, and every pod template and the serve Service embedded in the
  RayService, against kubernetes-validate's strict schemas for ``KUBERNETES_VERSION``;
* the RayService against KubeRay's CRD as JSON Schema (``../shared/schemas/rayservice_v1.json``);
* the ``serveConfigV2`` string, parsed, against Ray's ``ServeDeploySchema`` plus a key-by-key check
  (Ray drops unknown keys such as ``num_gpu`` without a word), and each application's ``args``
  against ``service.config.AppSettings``;
* cross-references no schema knows: ports, env, grace periods, GPUs, selectors, capacity.
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource

from .kustomize import render

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = PROJECT_ROOT / "deploy"
KUSTOMIZE_ROOT = DEPLOY / "kubernetes"
BASE = KUSTOMIZE_ROOT / "base"
SERVE_CONFIG = DEPLOY / "serve_config.yaml"
SYNC_SCRIPT = KUSTOMIZE_ROOT / "sync_serve_config.py"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = PROJECT_ROOT / ".dockerignore"
# Shared with the other projects of this workspace, next to the project root (see its README: the
# KubeRay CRD at commit feeaf72, just before v1.7.0, converted like kuberay's generate-crd-schema.sh).
RAYSERVICE_SCHEMA = PROJECT_ROOT.parent / "shared" / "schemas" / "rayservice_v1.json"

# Kubernetes API version the manifests are validated against (kubernetes-validate 1.37.0 carries
# 1.25-1.37; 1.33 is the oldest minor still in upstream support when KubeRay 1.6/1.7 shipped).
KUBERNETES_VERSION = "1.33.0"
DEFINITIONS_URI = "https://kubernetes.io/api/_definitions.json"

# Ray Serve defaults (2.60) that bound how long a replica may take to stop.
SERVE_GRACEFUL_SHUTDOWN_TIMEOUT_S = 20.0
SERVE_GRACEFUL_SHUTDOWN_WAIT_LOOP_S = 2.0
KUBERAY_DEFAULT_METRICS_PORT = 8080
GRPC_SIZE_ENV = "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"
GPU = "nvidia.com/gpu"


def overlays() -> dict[str, Path]:
    folder = KUSTOMIZE_ROOT / "overlays"
    return {p.name: p for p in sorted(folder.iterdir()) if (p / "kustomization.yaml").exists()}


def targets() -> dict[str, Path]:
    """Every kustomization the checks render: the base (valid on its own, though meant to be
    overlaid) and each overlay."""
    return {"base": BASE, **overlays()}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(Path(path).read_text())


@functools.cache
def rendered(directory: Path) -> tuple[dict[str, Any], ...]:
    """Rendered once per folder per test session; callers must not mutate (deepcopy first)."""
    return tuple(render(directory))


def of_kind(resources: typing.Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in resources if r.get("kind") == kind]


def _where(error: jsonschema.ValidationError) -> str:
    return "/".join(str(p) for p in error.absolute_path) or "(root)"


# --- Kubernetes schemas (kubernetes-validate) ------------------------------------------------------


def has_kubernetes_schema(resource: dict[str, Any]) -> bool:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return False
    except kubernetes_validate.ValidationError:
        return True
    return True


def core_problems(resource: dict[str, Any]) -> list[str]:
    """A built-in resource (Service, PodDisruptionBudget, ...) against the strict Kubernetes schema."""
    import kubernetes_validate

    name = f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{name}: {_where(e)}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"{name}: {e.message}"]
    return []


@functools.cache
def _definitions_registry() -> Registry:
    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    path = folder / f"v{KUBERNETES_VERSION}-local-strict" / "_definitions.json"
    return Registry().with_resource(DEFINITIONS_URI, Resource.from_contents(json.loads(path.read_text())))


def definition_problems(instance: Any, definition: str, where: str) -> list[str]:
    """``instance`` against one Kubernetes definition, e.g. ``io.k8s.api.core.v1.PodTemplateSpec``."""
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": f"{DEFINITIONS_URI}#/$defs/{definition}",
    }
    validator = jsonschema.Draft202012Validator(schema, registry=_definitions_registry())
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{where}: {_where(e)}: {e.message}" for e in errors]


def pod_templates(rayservice: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The RayService's pod templates by role: ``head`` and ``worker/<groupName>``."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    templates = {"head": cluster["headGroupSpec"]["template"]}
    for group in cluster.get("workerGroupSpecs", []):
        templates[f"worker/{group['groupName']}"] = group["template"]
    return templates


def embedded_problems(rayservice: dict[str, Any]) -> list[str]:
    """Pod templates and ``serveService`` of a RayService against the Kubernetes definitions."""
    problems = []
    for role, template in pod_templates(rayservice).items():
        problems += definition_problems(template, "io.k8s.api.core.v1.PodTemplateSpec", f"template {role}")
    if "serveService" in rayservice["spec"]:
        service = rayservice["spec"]["serveService"]
        problems += definition_problems(service, "io.k8s.api.core.v1.Service", "serveService")
    return problems


# --- RayService CRD (KubeRay JSON Schema) ----------------------------------------------------------


@functools.cache
def _rayservice_validator(path: Path) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(path.read_text()))


def rayservice_problems(rayservice: dict[str, Any], schema_path: Path = RAYSERVICE_SCHEMA) -> list[str]:
    validator = _rayservice_validator(schema_path)
    problems = [f"{_where(e)}: {e.message}" for e in validator.iter_errors(rayservice)]
    # The converted schema closes every nested object but leaves the root open.
    extra = sorted(set(rayservice) - set(validator.schema["properties"]))
    problems += [f"(root): unknown field {key!r}" for key in extra]
    if rayservice.get("apiVersion") != "ray.io/v1" or rayservice.get("kind") != "RayService":
        problems.append("(root): expected apiVersion ray.io/v1, kind RayService")
    return problems


# --- serveConfigV2 ---------------------------------------------------------------------------------


def serve_config_of(rayservice: dict[str, Any]) -> dict[str, Any]:
    text = rayservice["spec"]["serveConfigV2"]
    config = yaml.safe_load(text)
    if not isinstance(config, dict):
        raise ValueError("serveConfigV2 is not a YAML mapping")
    return config


def _models_in(annotation: Any) -> list[type]:
    """Pydantic model classes a field's annotation admits directly or as list items.

    ``Dict[...]`` annotations are free-form (``args``, ``runtime_env``, ``user_config``) and yield none.
    """
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin in (list, typing.Union, types.UnionType, typing.Annotated):
        args = typing.get_args(annotation)
        if origin is typing.Annotated:
            args = args[:1]
        return [m for a in args for m in _models_in(a)]
    return []


def unknown_keys(value: Any, model: type, where: str) -> list[str]:
    """Keys in ``value`` that ``model`` (a pydantic model) and its nested models do not define."""
    if not isinstance(value, dict):
        return []
    fields = model.model_fields
    aliases = {f.alias: name for name, f in fields.items() if f.alias}
    problems = []
    for key, sub in value.items():
        name = aliases.get(key, key)
        if name not in fields:
            problems.append(f"{where}.{key}: unknown key for {model.__name__} (Ray would ignore it)")
            continue
        for nested in _models_in(fields[name].annotation)[:1]:
            items = sub if isinstance(sub, list) else [sub]
            for i, item in enumerate(items):
                label = f"{where}.{key}[{i}]" if isinstance(sub, list) else f"{where}.{key}"
                problems += unknown_keys(item, nested, label)
    return problems


def serve_config_problems(config: dict[str, Any]) -> list[str]:
    """Ray's own validation, the strict key check, and each application's args (AppSettings)."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    from service.config import ConfigError, parse_app_settings

    problems = unknown_keys(config, ServeDeploySchema, "serveConfigV2")
    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as e:
        problems += [f"serveConfigV2: {e}"]
    for app in config.get("applications") or []:
        try:
            parse_app_settings(app.get("args"))
        except ConfigError as e:
            problems.append(f"serveConfigV2 application {app.get('name')!r}: {e}")
    return problems


@functools.cache
def sync_module() -> types.ModuleType:
    """deploy/kubernetes/sync_serve_config.py, loaded by path (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location("sync_serve_config", SYNC_SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def expected_serve_config(overlay: Path | None) -> dict[str, Any]:
    """deploy/serve_config.yaml plus the overlay's documented differences (serve-overrides.yaml)."""
    config = load_yaml(SERVE_CONFIG)
    overrides = overlay / "serve-overrides.yaml" if overlay else None
    if overrides and overrides.exists():
        config = sync_module().merge(config, load_yaml(overrides) or {})
    return config


def drift_problems(actual: dict[str, Any], expected: dict[str, Any], where: str = "") -> list[str]:
    """Where two parsed configs differ, as paths (empty when equal)."""
    if isinstance(actual, dict) and isinstance(expected, dict):
        problems = []
        for key in sorted(set(actual) | set(expected), key=str):
            if key not in actual:
                problems.append(f"{where}.{key}: missing from serveConfigV2")
            elif key not in expected:
                problems.append(f"{where}.{key}: not in deploy/serve_config.yaml (+ overrides)")
            else:
                problems += drift_problems(actual[key], expected[key], f"{where}.{key}")
        return problems
    if isinstance(actual, list) and isinstance(expected, list) and len(actual) == len(expected):
        pairs = enumerate(zip(actual, expected, strict=True))
        return [p for i, (a, e) in pairs for p in drift_problems(a, e, f"{where}[{i}]")]
    return [] if actual == expected else [f"{where or '(root)'}: {actual!r} != {expected!r}"]


# --- cross-references -------------------------------------------------------------------------------


def quantity(value: Any) -> float:
    """A Kubernetes CPU/GPU quantity as a number ("500m" → 0.5, "2" → 2)."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def ray_container(template: dict[str, Any]) -> dict[str, Any]:
    # KubeRay treats the first container as the Ray container.
    return template["spec"]["containers"][0]


def _ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}


def port_problems(rayservice: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Container ports carry the names KubeRay looks up, with the ports Serve and Ray listen on."""
    http = (config.get("http_options") or {}).get("port", 8000)
    grpc = (config.get("grpc_options") or {}).get("port", 9000)
    cluster = rayservice["spec"]["rayClusterConfig"]
    problems = []
    groups = {"head": cluster["headGroupSpec"]}
    groups |= {f"worker/{g['groupName']}": g for g in cluster.get("workerGroupSpecs", [])}
    for role, group in groups.items():
        metrics = int(
            group.get("rayStartParams", {}).get("metrics-export-port", KUBERAY_DEFAULT_METRICS_PORT)
        )
        want = {"serve": http, "serve-grpc": grpc, "metrics": metrics}
        if role == "head":
            want |= {"gcs-server": 6379, "dashboard": 8265}
        have = _ports(ray_container(group["template"]))
        for name, port in want.items():
            if have.get(name) != port:
                problems.append(f"{role}: container port {name!r} is {have.get(name)}, expected {port}")
    head_serving = {
        n: p
        for n, p in _ports(ray_container(cluster["headGroupSpec"]["template"])).items()
        if n == "serve" or n.startswith("serve-")
    }
    service_ports = rayservice["spec"].get("serveService", {}).get("spec", {}).get("ports", [])
    for port in service_ports:
        if head_serving.get(port.get("name")) != port.get("port"):
            problems.append(
                f"serveService port {port.get('name')!r}: no head container port with that name and number"
            )
    missing = set(head_serving) - {p.get("name") for p in service_ports}
    if service_ports and missing:
        problems.append(f"serveService lacks the head's serving ports {sorted(missing)}")
    return problems


def env_problems(rayservice: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Every Ray container sets the gRPC proxy message limit, at least the largest request body, and
    Ray Serve's switches of ``service.local.RAY_SERVE_ENV`` (what ``make serve`` runs with)."""
    from service.config import parse_app_settings
    from service.local import RAY_SERVE_ENV

    body_limits = [
        parse_app_settings(a.get("args")).limits.max_body_bytes for a in config.get("applications", [])
    ]
    problems = []
    for role, template in pod_templates(rayservice).items():
        env = {e["name"]: e.get("value") for e in ray_container(template).get("env", [])}
        value = env.get(GRPC_SIZE_ENV)
        if value is None:
            problems.append(f"{role}: {GRPC_SIZE_ENV} is not set")
        elif int(value) < max(body_limits, default=0):
            problems.append(
                f"{role}: {GRPC_SIZE_ENV}={value} is below limits.max_body_bytes {max(body_limits)}"
            )
        for key, wanted in RAY_SERVE_ENV.items():
            if env.get(key) != wanted:
                problems.append(f"{role}: {key}={env.get(key)!r}, service.local.RAY_SERVE_ENV has {wanted!r}")
    return problems


def _prestop_sleep(container: dict[str, Any]) -> float:
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    found = re.search(r"\bsleep\s+(\d+(?:\.\d+)?)", " ".join(command))
    return float(found.group(1)) if found else 0.0


def shutdown_budget_s(config: dict[str, Any]) -> float:
    """The longest a Serve replica may take to stop, from the config's overrides or Ray's defaults."""
    budgets = [SERVE_GRACEFUL_SHUTDOWN_TIMEOUT_S + SERVE_GRACEFUL_SHUTDOWN_WAIT_LOOP_S]
    for app in config.get("applications", []):
        for d in app.get("deployments", []) or []:
            budgets.append(
                d.get("graceful_shutdown_timeout_s", SERVE_GRACEFUL_SHUTDOWN_TIMEOUT_S)
                + d.get("graceful_shutdown_wait_loop_s", SERVE_GRACEFUL_SHUTDOWN_WAIT_LOOP_S)
            )
    return max(budgets)


def lifecycle_problems(rayservice: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Grace periods outlast preStop + Serve's shutdown; probes are left to KubeRay; the head holds
    no replicas."""
    problems = []
    budget = shutdown_budget_s(config)
    for role, template in pod_templates(rayservice).items():
        container = ray_container(template)
        needed = _prestop_sleep(container) + budget
        grace = template["spec"].get("terminationGracePeriodSeconds", 30)
        if grace <= needed:
            problems.append(
                f"{role}: terminationGracePeriodSeconds {grace} <= preStop + Serve shutdown {needed:g}"
            )
        for probe in ("livenessProbe", "readinessProbe"):
            if probe in container:
                problems.append(f"{role}: {probe} set; it replaces KubeRay's (Serve-aware on workers)")
    head_params = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"].get("rayStartParams", {})
    if head_params.get("num-cpus") != "0":
        problems.append('head: rayStartParams num-cpus must be "0" so that replicas land on workers')
    return problems


def resource_problems(rayservice: dict[str, Any]) -> list[str]:
    """Every container states cpu and memory requests and limits; GPUs request = limit; one image."""
    problems = []
    images = set()
    for role, template in pod_templates(rayservice).items():
        for container in template["spec"]["containers"]:
            images.add(container.get("image"))
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                for name in ("cpu", "memory"):
                    if name not in resources.get(part, {}):
                        problems.append(f"{role}/{container['name']}: no {part}.{name}")
            if resources.get("requests", {}).get(GPU) != resources.get("limits", {}).get(GPU):
                problems.append(f"{role}/{container['name']}: {GPU} request and limit differ")
    if len(images) > 1:
        problems.append(f"head and workers run different images {sorted(map(str, images))}")
    return problems


def gpu_scheduling_problems(rayservice: dict[str, Any]) -> list[str]:
    """GPU pods tolerate the GPU taint; CPU-only pods are not pinned to GPU nodes."""
    problems = []
    for role, template in pod_templates(rayservice).items():
        spec = template["spec"]
        gpus = quantity(ray_container(template).get("resources", {}).get("limits", {}).get(GPU, 0))
        tolerates = any(t.get("key") == GPU for t in spec.get("tolerations", []))
        pinned = any(k.startswith("nvidia.com/") for k in spec.get("nodeSelector", {}))
        if gpus and not tolerates:
            problems.append(f"{role}: requests {GPU} but does not tolerate the {GPU} taint")
        if not gpus and (tolerates or pinned):
            problems.append(f"{role}: no {GPU} requested, yet scheduled onto GPU nodes")
    return problems


def kuberay_pod_labels(rayservice: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Labels the pods will carry: the template's plus the ones KubeRay adds."""
    labels = {}
    for role, template in pod_templates(rayservice).items():
        node_type, _, group = role.partition("/")
        own = template.get("metadata", {}).get("labels", {})
        labels[role] = {**own, "ray.io/node-type": node_type, "ray.io/group": group or "headgroup"}
    return labels


def selector_problems(name: str, selector: dict[str, Any], rayservice: dict[str, Any]) -> list[str]:
    """A label selector (matchLabels) must select at least one of the RayService's pods."""
    if set(selector) - {"matchLabels"}:
        return [f"{name}: only matchLabels selectors are checked here"]
    wanted = selector.get("matchLabels", {})
    pods = kuberay_pod_labels(rayservice)
    if not any(wanted.items() <= labels.items() for labels in pods.values()):
        return [f"{name}: selector {wanted} selects none of the RayService's pods"]
    return []


def podmonitor_problems(podmonitor: dict[str, Any], rayservice: dict[str, Any]) -> list[str]:
    """The PodMonitor selects the Ray pods and scrapes ports that every selected pod declares."""
    name = f"PodMonitor/{podmonitor['metadata']['name']}"
    problems = selector_problems(name, podmonitor["spec"]["selector"], rayservice)
    wanted = podmonitor["spec"]["selector"].get("matchLabels", {})
    labels = kuberay_pod_labels(rayservice)
    for role, template in pod_templates(rayservice).items():
        if not wanted.items() <= labels[role].items():
            continue
        for endpoint in podmonitor["spec"].get("podMetricsEndpoints", []):
            if endpoint.get("port") not in _ports(ray_container(template)):
                problems.append(f"{name}: {role} declares no port named {endpoint.get('port')!r}")
    return problems


# --- capacity ---------------------------------------------------------------------------------------


def replica_demands(config: dict[str, Any], repository: Any) -> dict[str, tuple[int, float, float]]:
    """Per deployment: (max replicas, CPUs per replica, GPUs per replica).

    Mirrors how service/app.py names and sizes the deployments (``Ingress``, which holds the models'
    GPUs in the fused topology; ``ImageCodec`` and ``Segmenter-<model>`` in the split topology only,
    from the app args and models/repository.yaml), then applies Ray's own
    ``deployments:`` overrides, whose ``ray_actor_options`` replaces the code's (unset num_cpus = 1).
    """
    from service.app import resolve_topology
    from service.config import parse_app_settings

    demands: dict[str, tuple[int, float, float]] = {}
    for app in config.get("applications", []):
        args = parse_app_settings(app.get("args"))
        ingress, codec = args.ingress, args.codec
        names = args.models if args.models is not None else repository.names()
        fused = resolve_topology(args, [repository.get(n) for n in names]) == "fused"
        ingress_max = ingress.autoscaling.max_replicas if ingress.autoscaling else ingress.num_replicas
        demands["Ingress"] = (ingress_max, ingress.num_cpus, ingress.num_gpus if fused else 0.0)
        if not fused:
            codec_max = codec.autoscaling.max_replicas if codec.autoscaling else codec.num_replicas
            demands["ImageCodec"] = (codec_max, codec.num_cpus, 0.0)
            for model in names:
                d = repository.get(model).deployment
                count = d.autoscaling.max_replicas if d.autoscaling else d.num_replicas
                demands[f"Segmenter-{model}"] = (count, d.num_cpus, d.num_gpus)
        for override in app.get("deployments", []) or []:
            count, cpus, gpus = demands.get(override["name"], (1, 1.0, 0.0))
            if "ray_actor_options" in override:
                options = override["ray_actor_options"] or {}
                cpus, gpus = options.get("num_cpus", 1.0), options.get("num_gpus", 0.0)
            if override.get("autoscaling_config"):
                count = override["autoscaling_config"].get("max_replicas", 1)
            elif isinstance(override.get("num_replicas"), int):
                count = override["num_replicas"]
            demands[override["name"]] = (count, cpus, gpus)
    return demands


def worker_capacity(rayservice: dict[str, Any]) -> list[tuple[str, int, float, float]]:
    """Per worker group: (name, max pods, logical CPUs per pod, GPUs per pod), as KubeRay starts Ray."""
    groups = []
    for group in rayservice["spec"]["rayClusterConfig"].get("workerGroupSpecs", []):
        resources = ray_container(group["template"]).get("resources", {})
        params = group.get("rayStartParams", {})
        limits, requests = resources.get("limits", {}), resources.get("requests", {})
        cpus = quantity(params.get("num-cpus", limits.get("cpu", requests.get("cpu", 0))))
        gpus = quantity(params.get("num-gpus", limits.get(GPU, 0)))
        pods = group.get("maxReplicas", 1) * group.get("numOfHosts", 1)
        groups.append((group["groupName"], pods, cpus, gpus))
    return groups


def capacity_problems(rayservice: dict[str, Any], config: dict[str, Any], repository: Any) -> list[str]:
    """The replicas at their maximum fit the workers at theirs (a necessary condition: no bin packing),
    and each single replica fits one worker pod."""
    demands = replica_demands(config, repository)
    groups = worker_capacity(rayservice)
    problems = []
    for name, (_, cpus, gpus) in demands.items():
        if not any(cpus <= g_cpus and gpus <= g_gpus for _, _, g_cpus, g_gpus in groups):
            problems.append(f"{name}: a replica ({cpus} CPU, {gpus} GPU) fits no worker pod")
    need_cpu = sum(n * c for n, c, _ in demands.values())
    need_gpu = sum(n * g for n, _, g in demands.values())
    have_cpu = sum(pods * c for _, pods, c, _ in groups)
    have_gpu = sum(pods * g for _, pods, _, g in groups)
    if need_cpu > have_cpu:
        problems.append(f"replicas at max need {need_cpu:g} CPUs, workers at max have {have_cpu:g}")
    if need_gpu > have_gpu:
        problems.append(f"replicas at max need {need_gpu:g} GPUs, workers at max have {have_gpu:g}")
    return problems
