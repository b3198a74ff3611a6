"""The locust users' shared state: the workload (built once, from the models the service serves),
each user's seeded picks, and every response time, written as exact percentiles when locust quits
(``--latency-json``). Imported by the locustfile after gevent is set up for gRPC."""

from __future__ import annotations

import itertools
import json
import random
import sys
import threading
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlparse

import grpc
from locust import events

from loadtests.client import channel_options, pb, pb_grpc
from loadtests.common import parse_weighted
from loadtests.images import Workload

_lock = threading.Lock()  # gevent-patched: a greenlet lock
_workload: Workload | None = None
_user_ids = itertools.count()
_latencies: dict[tuple[str, str], list[float]] = defaultdict(list)
_failures: dict[tuple[str, str], int] = defaultdict(int)
_stages: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
_batches: dict[tuple[str, str], list[int]] = defaultdict(list)


def grpc_target(options) -> str:
    if options.grpc_target:
        return options.grpc_target
    host = urlparse(options.host or "http://127.0.0.1:8000").hostname or "127.0.0.1"
    return f"{host}:9000"


def served_models(environment) -> list[str]:
    """The models the service lists: ``GET /v1/models`` on --host, else gRPC ``ListModels``."""
    options = environment.parsed_options
    if environment.host:
        import httpx

        try:
            response = httpx.get(f"{environment.host.rstrip('/')}/v1/models", timeout=30)
            response.raise_for_status()
            return [m["name"] for m in response.json()["models"]]
        except httpx.HTTPError as e:
            print(f"segserve locust: GET /v1/models failed ({e}); asking over gRPC", file=sys.stderr)
    with grpc.insecure_channel(grpc_target(options), options=channel_options()) as channel:
        answer = pb_grpc.SegmentationStub(channel).ListModels(pb.ListModelsRequest(), timeout=30)
        return [m.name for m in answer.models]


def workload(environment) -> Workload:
    """Built by the first user that starts; the others wait for it."""
    global _workload
    with _lock:
        if _workload is None:
            options = environment.parsed_options
            served = served_models(environment)
            requested = parse_weighted(options.models) if options.models else [(m, 1.0) for m in served]
            models = [(m, w) for m, w in requested if m in served]
            skipped = [m for m, _ in requested if m not in served]
            if skipped:
                print(f"segserve locust: skipping models not served: {skipped}", file=sys.stderr)
            if not models:
                raise RuntimeError(f"no model to load-test (requested {requested}, served {served})")
            _workload = Workload.build(
                models, options.image_sizes, seed=options.seed, synthetic=options.synthetic_per_size
            )
            print(f"segserve locust: models {models}, sizes {list(_workload.images)}", file=sys.stderr)
        return _workload


def user_rng(environment, protocol: str) -> random.Random:
    return random.Random(f"{environment.parsed_options.seed}/{protocol}/{next(_user_ids)}")


@events.request.add_listener
def _on_request(request_type, name, response_time, exception=None, **_kwargs) -> None:
    """Keeps every response time (ms, unrounded) for exact percentiles."""
    key = (request_type, name)
    if exception is None:
        _latencies[key].append(float(response_time))
    else:
        _failures[key] += 1


def record_answer(request_type: str, name: str, checked) -> None:
    """Server-side stage timings and batch size of a successful answer."""
    if checked is None or checked.reason:
        return
    key = (request_type, name)
    for stage, ms in checked.timings_ms.items():
        _stages[key][stage].append(ms)
    if checked.batch_size:
        _batches[key].append(checked.batch_size)


@events.quitting.add_listener
def _write_latencies(environment, **_kwargs) -> None:
    path = environment.parsed_options.latency_json if environment.parsed_options else ""
    if not path:
        return
    import numpy as np

    def summary(values: list[float]) -> dict:
        if not values:
            return {"requests": 0}
        a = np.asarray(values)
        return {
            "requests": len(values),
            "mean_ms": float(a.mean()),
            **{f"p{q}_ms": float(np.percentile(a, q)) for q in (50, 90, 95, 99)},
            "max_ms": float(a.max()),
        }

    rows = []
    for key in sorted(set(_latencies) | set(_failures)):
        batches = _batches.get(key, [])
        rows.append(
            {
                "type": key[0],
                "name": key[1],
                "failures": _failures.get(key, 0),
                **summary(_latencies.get(key, [])),
                "stage_mean_ms": {s: float(np.mean(v)) for s, v in _stages.get(key, {}).items()},
                "mean_batch_size": float(np.mean(batches)) if batches else None,
            }
        )
    everything = [v for values in _latencies.values() for v in values]
    total = {"type": "", "name": "Aggregated", "failures": sum(_failures.values()), **summary(everything)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"rows": rows, "total": total}, indent=2))
