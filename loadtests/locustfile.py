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
import sys
import time
import uuid
from pathlib import Path

import grpc
import grpc.experimental.gevent as grpc_gevent

# gRPC's own threads must cooperate with gevent: this has to happen before any channel exists.
grpc_gevent.init_gevent()

from grpc_interceptor import ClientInterceptor  # noqa: E402
from locust import FastHttpUser, User, events, task  # noqa: E402

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # locust puts only this file's folder on sys.path
    sys.path.insert(0, _ROOT)

from loadtests.checks import check_grpc_answer, check_http_answer  # noqa: E402
from loadtests.client import channel_options, pb, pb_grpc  # noqa: E402
from loadtests.common import DEFAULT_IMAGE_SIZES  # noqa: E402
from loadtests.locust_state import grpc_target, record_answer, user_rng, workload  # noqa: E402


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


@events.init.add_listener
def _configure(environment, **_kwargs) -> None:
    if environment.parsed_options is not None:
        # FastHttpUser hands its timeout to the client it builds per user: set it on the class.
        SegmentHttpUser.network_timeout = environment.parsed_options.request_timeout_s


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
