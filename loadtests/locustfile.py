"""Locust users for the segmentation service: one over HTTP, one over gRPC.

Run headless through ``loadtests/run.py`` (``make loadtest``), or directly::

    locust -f loadtests/locustfile.py --headless -u 8 -r 2 -t 60s --host http://127.0.0.1:8000 \\
        --grpc-target 127.0.0.1:9000 --csv loadtests/results/tmp/run

Each user sends a weighted mix of models (``--models unet-shapes:3,panoptic-shapes:1``; default:
every model the service lists) and image sizes (``--image-sizes 128x128:3,512x384:1``) drawn from a
seeded image set (real photographs as JPEG, synthetic shapes as PNG; ``--seed``). A request counts
as a success only when the answer is a 200 / OK with a PNG mask of the image's size; everything
else is a failure with its reason. Names in the stats are ``<model> <width>x<height>``; the request
type is ``POST`` over HTTP and ``grpc`` over gRPC.

``--latency-json PATH`` writes exact per-name latency percentiles and mean per-stage server timings
when locust quits (locust's own percentiles are rounded to 2 significant digits).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlparse

import grpc
import grpc.experimental.gevent as grpc_gevent

# gRPC's own threads must cooperate with gevent: this has to happen before any channel exists.
grpc_gevent.init_gevent()

from grpc_interceptor import ClientInterceptor  # noqa: E402
from locust import FastHttpUser, User, events, task  # noqa: E402

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # locust puts only this file's folder on sys.path
    sys.path.insert(0, _ROOT)

from segserve_client.grpc import channel_options  # noqa: E402

from loadtests.common import (  # noqa: E402
    DEFAULT_IMAGE_SIZES,
    Workload,
    check_grpc_answer,
    check_http_answer,
    parse_weighted,
)
from service.generated.segmentation.v1 import segmentation_pb2 as pb  # noqa: E402
from service.generated.segmentation.v1 import segmentation_pb2_grpc as pb_grpc  # noqa: E402


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    group = parser.add_argument_group("segserve")
    group.add_argument(
        "--grpc-target", default="", help="host:port of the gRPC proxy (default: --host's host:9000)"
    )
    group.add_argument("--models", default="", help="weighted models, e.g. a:3,b:1 (default: all served)")
    group.add_argument("--image-sizes", default=DEFAULT_IMAGE_SIZES, help="weighted WIDTHxHEIGHT sizes")
    group.add_argument("--seed", type=int, default=0, help="seed of the image set and of each user's picks")
    group.add_argument(
        "--synthetic-per-size", type=int, default=3, help="synthetic images per size (+3 real)"
    )
    group.add_argument("--request-timeout-s", type=float, default=60.0, help="per-request timeout")
    group.add_argument("--wait-ms", type=float, default=0.0, help="think time between a user's requests")
    group.add_argument("--latency-json", default="", help="write exact percentiles here on quit")


class CheckFailed(Exception):
    """The service answered, but not with a valid segmentation."""


class RpcFailed(Exception):
    """The call failed with a gRPC status other than OK."""


# --- shared state: the workload (built once) and exact latencies -------------------------------------

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


@events.init.add_listener
def _configure(environment, **_kwargs) -> None:
    if environment.parsed_options is not None:
        # FastHttpUser hands its timeout to the client it builds per user: set it on the class.
        SegmentHttpUser.network_timeout = environment.parsed_options.request_timeout_s


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


# --- HTTP ---------------------------------------------------------------------------------------------


class SegmentHttpUser(FastHttpUser):
    """``POST /v1/models/{model}/segment`` with the raw image body; JSON answer with a base64 PNG mask."""

    connection_timeout = 10.0
    network_timeout = 60.0

    def wait_time(self) -> float:
        return self.environment.parsed_options.wait_ms / 1000

    def on_start(self) -> None:
        self.workload = workload(self.environment)
        self.rng = user_rng(self.environment, "http")

    @task
    def segment(self) -> None:
        model, image = self.workload.pick(self.rng)
        name = f"{model} {image.size_label}"
        with self.client.post(
            f"/v1/models/{model}/segment",
            data=image.data,
            headers={"content-type": image.content_type, "accept": "application/json"},
            name=name,
            catch_response=True,
        ) as response:
            error = getattr(response, "error", None)
            if error is not None and not response.status_code:
                reason, checked = f"{type(error).__name__}: {error}"[:200], None
            else:
                checked = check_http_answer(response.status_code, response.content or b"", image, model)
                reason = checked.reason
            if reason:
                response.failure(reason)
            else:
                response.success()
                record_answer("POST", name, checked)


# --- gRPC ---------------------------------------------------------------------------------------------


class LocustInterceptor(ClientInterceptor):
    """Times each call and reports it to locust (locust's gRPC pattern).

    A user registers what it expects of a call under the request's ``request_id`` (its stats name and
    a check of the answer) before making it; calls nobody registered are reported under their method.
    """

    def __init__(self, environment) -> None:
        self.environment = environment
        self.expected: dict[str, tuple[str, object]] = {}

    def expect(self, request_id: str, name: str, check) -> None:
        self.expected[request_id] = (name, check)

    def intercept(self, method, request_or_iterator, call_details):
        request_id = getattr(request_or_iterator, "request_id", "")
        name, check = self.expected.pop(request_id, (call_details.method, None))
        started = time.perf_counter()
        response = None
        result = None
        exception: Exception | None = None
        length = 0
        try:
            response = method(request_or_iterator, call_details)
            result = response.result()
            elapsed_ms = (time.perf_counter() - started) * 1000
            length = result.ByteSize()
        except grpc.RpcError as e:
            elapsed_ms = (time.perf_counter() - started) * 1000
            code = e.code().name if hasattr(e, "code") else "UNKNOWN"
            exception = RpcFailed(f"{code}: {(e.details() if hasattr(e, 'details') else '') or ''}"[:200])
        checked = None
        if exception is None and check is not None:
            checked = check(result)
            if checked.reason:
                exception = CheckFailed(checked.reason)
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=elapsed_ms,
            response_length=length,
            response=result,
            context={},
            exception=exception,
        )
        if exception is None:
            record_answer("grpc", name, checked)
        return response


class SegmentGrpcUser(User):
    """Unary ``segmentation.v1.Segmentation/Segment`` through Ray Serve's gRPC proxy."""

    def wait_time(self) -> float:
        return self.environment.parsed_options.wait_ms / 1000

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.workload = workload(self.environment)
        self.rng = user_rng(self.environment, "grpc")
        self.timeout_s = options.request_timeout_s
        self.interceptor = LocustInterceptor(self.environment)
        self.channel = grpc.insecure_channel(grpc_target(options), options=channel_options())
        self.stub = pb_grpc.SegmentationStub(grpc.intercept_channel(self.channel, self.interceptor))

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def segment(self) -> None:
        model, image = self.workload.pick(self.rng)
        request_id = uuid.uuid4().hex
        request = pb.SegmentRequest(
            model=model,
            image=image.data,
            content_type=image.content_type,
            format=pb.MASK_FORMAT_PNG,
            request_id=request_id,
        )
        self.interceptor.expect(
            request_id, f"{model} {image.size_label}", lambda r: check_grpc_answer(r, image, model)
        )
        # A failed call was already reported to locust by the interceptor. Ray's gRPC proxy does not
        # forward grpc-timeout; the service reads x-timeout-ms.
        with contextlib.suppress(grpc.RpcError):
            self.stub.Segment(
                request,
                timeout=self.timeout_s,
                metadata=(("x-timeout-ms", str(int(self.timeout_s * 1000))),),
            )
