"""One request at a time to a system under test: HTTP (httpx, one ``AsyncClient`` with a pool of
``concurrency`` keep-alive connections) or gRPC (one ``grpc.aio`` channel, HTTP/2 streams).

Over HTTP the answer is ours' JSON (``accept="json"``) or the label-map PNG as the body
(``accept="png"``: ours with ``Accept: image/png``, and every peer), so all systems can be asked
for the same work.
"""

from __future__ import annotations

from typing import Any

from loadtests.checks import Checked, check_grpc_answer, check_http_answer, check_png_answer
from loadtests.images import TestImage

ACCEPT = {"json": "application/json", "png": "image/png"}


class HttpSender:
    def __init__(
        self,
        url: str,
        concurrency: int,
        timeout_s: float,
        verify_png: bool = False,
        transport: Any = None,
        accept: str = "json",
    ) -> None:
        import httpx

        self._httpx = httpx
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.client = httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_s, transport=transport)
        self.verify_png = verify_png
        self.accept = accept

    async def send(self, model: str, image: TestImage) -> Checked:
        try:
            response = await self.client.post(
                f"/v1/models/{model}/segment",
                content=image.data,
                headers={"content-type": image.content_type, "accept": ACCEPT[self.accept]},
            )
        except self._httpx.HTTPError as e:
            return Checked(f"{type(e).__name__}", {})
        if self.accept == "png":
            batch = response.headers.get("x-batch-size")
            return check_png_answer(response.status_code, response.content, image, batch, self.verify_png)
        return check_http_answer(response.status_code, response.content, image, model, self.verify_png)

    async def aclose(self) -> None:
        await self.client.aclose()


class GrpcSender:
    def __init__(self, target: str, timeout_s: float, verify_png: bool = False) -> None:
        import grpc

        from loadtests.client import channel_options, pb, pb_grpc

        self._grpc = grpc
        self._pb = pb
        self.channel = grpc.aio.insecure_channel(target, options=channel_options())
        self.stub = pb_grpc.SegmentationStub(self.channel)
        self.timeout_s = timeout_s
        # Ray's gRPC proxy does not forward grpc-timeout; the service reads x-timeout-ms.
        self.metadata = (("x-timeout-ms", str(int(timeout_s * 1000))),)
        self.verify_png = verify_png

    async def send(self, model: str, image: TestImage) -> Checked:
        pb = self._pb
        request = pb.SegmentRequest(
            model=model, image=image.data, content_type=image.content_type, format=pb.MASK_FORMAT_PNG
        )
        try:
            response = await self.stub.Segment(request, timeout=self.timeout_s, metadata=self.metadata)
        except self._grpc.aio.AioRpcError as e:
            return Checked(f"gRPC {e.code().name}", {})
        return check_grpc_answer(response, image, model, self.verify_png)

    async def aclose(self) -> None:
        await self.channel.close()
