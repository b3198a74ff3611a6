"""Helpers for integration tests that look at replicas or deploy extra applications beside the session's.

The session fixture (``conftest.py``) owns one Ray and one Serve with the shipped application
"segmentation" at "/". Tests that need other settings deploy a second application under their own
name and route prefix and delete it afterwards, so later modules see the session's application alone.
With two applications, gRPC calls must name theirs in the ``application`` metadata.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
MODEL = "unet-shapes"
SESSION_APP = "segmentation"
READY_TIMEOUT_S = 120
# Set in the environment before the session's Ray starts, so every Ray worker inherits it, as workers
# inherit a pod's env from a Kubernetes Secret; only applications that name it (api_keys_env) use it.
API_KEYS_ENV = "SEGSERVE_TEST_API_KEYS"
ENV_API_KEYS = ("env-key-0ne", "env-key-two")


def wait_for(predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.25, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; raise ``TimeoutError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as e:  # a service that is restarting may refuse connections
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval_s)
    raise TimeoutError(f"{what or 'condition'} not met after {timeout_s}s (last: {last!r})")


# --- replicas -------------------------------------------------------------------------------------------


def replica_actors(app: str | None = None) -> dict[str, tuple[str, int]]:
    """Alive Serve replica actors: actor id -> (class name, pid), e.g. ``ServeReplica:segmentation:Ingress``.

    Read from the GCS actor table (``ray._private.state``): the public ``ray.util.state.list_actors``
    goes through the dashboard, which the test Ray runs without.
    """
    from ray._private import state

    table = state.actors(actor_state_name="ALIVE")
    found = {}
    for actor_id, info in table.items():
        name = info.get("ActorClassName", "")
        if "ServeReplica" in name and (app is None or name.split(":")[1:2] == [app]):
            found[actor_id] = (name, int(info.get("Pid", 0)))
    return found


def deployment_replicas(deployment: str, app: str = SESSION_APP) -> dict[str, int]:
    """Alive replicas of ``deployment`` in ``app``: actor id -> pid."""
    suffix = f":{app}:{deployment}"
    return {a: pid for a, (name, pid) in replica_actors(app).items() if name.endswith(suffix)}


def kill_actor(actor_id: str) -> None:
    """``ray.kill`` a Serve replica by its actor id (Serve's controller then starts a replacement)."""
    import ray
    from ray._private import state

    info = state.actors(actor_id=actor_id)
    ray.kill(ray.get_actor(info["Name"], namespace="serve"), no_restart=True)


def session_ingress_replicas() -> int:
    """The session app's ingress replicas (fused topology: each one runs every model)."""
    from service.local import load_serve_config

    return load_serve_config()["applications"][0]["args"]["ingress"]["num_replicas"]


def running_replicas(app: str, deployment: str) -> int:
    from ray import serve
    from ray.serve.schema import ReplicaState

    status = serve.status().applications.get(app)
    if status is None or deployment not in status.deployments:
        return 0
    return status.deployments[deployment].replica_states.get(ReplicaState.RUNNING, 0)


def app_is_healthy(url: str, app: str, deployments: dict[str, int]) -> bool:
    """``/readyz`` answers 200 and every named deployment has its number of RUNNING replicas."""
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    status = serve.status().applications.get(app)
    if status is None or status.status != ApplicationStatus.RUNNING:
        return False
    if any(running_replicas(app, d) != n for d, n in deployments.items()):
        return False
    return httpx.get(f"{url}/readyz", timeout=10).status_code == 200


# --- extra applications --------------------------------------------------------------------------------


def shipped_entry(model: str = MODEL) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "models" / "repository.yaml").read_text())
    return next(m for m in data["models"] if m["name"] == model)


@contextlib.contextmanager
def temp_repository(tag: str, model: str = MODEL, **changes: dict[str, Any] | str) -> Iterator[str]:
    """A one-model repository next to the shipped one, the model's entry updated section by section.

    It must live in ``models/`` itself: weights paths are relative to the repository's folder and may
    not leave it (``Repository.weights_path``). The file is hidden (``.test-<tag>-<pid>.yaml``) and
    removed afterwards. Yields its path relative to the project root (the form the app args take).
    """
    entry = shipped_entry(model)
    for key, value in changes.items():
        entry[key] = {**entry.get(key, {}), **value} if isinstance(value, dict) else value
    path = ROOT / "models" / f".test-{tag}-{os.getpid()}.yaml"
    path.write_text(yaml.safe_dump({"models": [entry]}, sort_keys=False))
    try:
        yield str(path.relative_to(ROOT))
    finally:
        path.unlink(missing_ok=True)


def light_args(repository: str, **more: Any) -> dict[str, Any]:
    """App args for an extra test application: no CPU reservations, so it never waits for room."""
    return {
        "repository": repository,
        "codec": {"num_cpus": 0},
        "ingress": {"num_cpus": 0},
        **more,
    }


def deploy_app(name: str, args: dict[str, Any], route_prefix: str | None = None) -> None:
    """``serve.run`` an application built by ``build_app(args)``; returns when it is RUNNING."""
    from ray import serve

    from service.app import build_app

    serve.run(build_app(args), name=name, route_prefix=route_prefix or f"/{name}", blocking=False)


@contextlib.contextmanager
def extra_app(service, name: str, args: dict[str, Any]) -> Iterator[str]:
    """Deploy application ``name`` at ``/<name>``, wait until it is ready, yield its base URL, delete it."""
    from ray import serve

    deploy_app(name, args)
    url = f"{service.url}/{name}"
    try:
        wait_for(
            lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200,
            READY_TIMEOUT_S,
            what=f"application {name} ready",
        )
        yield url
    finally:
        serve.delete(name)
        # HAProxy learns of the deletion a moment later (a config reload): until then, gRPC calls without
        # `application` metadata are refused as ambiguous. The next module starts once it has.
        wait_for(
            lambda: f'"/{name}"' not in httpx.get(f"{service.url}/-/routes", timeout=10).text,
            READY_TIMEOUT_S,
            what=f"application {name} gone from HAProxy's routes",
        )


# --- load -----------------------------------------------------------------------------------------------


class ClosedLoop:
    """``clients`` threads, each calling ``send(i)`` again as soon as the previous call returned, until
    ``stop()``. Records (start, end, outcome) per call, where outcome is what ``send`` returned or raised."""

    def __init__(self, send: Callable[[int], Any], clients: int) -> None:
        import threading

        self.send = send
        self.records: list[tuple[float, float, Any]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(k, clients), daemon=True) for k in range(clients)
        ]

    def _run(self, k: int, clients: int) -> None:
        i = k
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                outcome = self.send(i)
            except Exception as e:
                outcome = e
            self.records.append((started, time.monotonic(), outcome))
            i += clients

    def __enter__(self) -> ClosedLoop:
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout_s: float = 180) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout_s)
        assert not any(t.is_alive() for t in self._threads), "a load client hung"

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def outcomes_between(self, start: float, end: float) -> list[Any]:
        return [o for s, e, o in self.records if s < end and e > start]
