"""Which way each handle call of the split topology goes: by value over Ray Serve's gRPC transport
when its argument is small, by reference (the object store) when it is not (``service/deployments/split.py``).

The handles here record the calls made on them; Ray's own transports are exercised by
``tests/integration/test_topology.py``, which serves both kinds of body through a real split app.
"""

from __future__ import annotations

import asyncio

import numpy as np

from service.deployments.split import BY_VALUE_MAX_BYTES, SplitModels, carried_bytes
from service.imaging.geometry import Geometry
from service.types import ImageTensor, PreparedImage, Segmentation, SegmentOptions


class Response:
    def __init__(self, value):
        self.value = value

    def __await__(self):
        return asyncio.sleep(0, self.value).__await__()

    def cancel(self) -> None:
        pass


class Handle:
    """Records (transport, method) for each call and answers with ``answers[method](argument)``."""

    def __init__(self, calls: list, answers: dict, by_value: bool = False) -> None:
        self.calls, self.answers, self.by_value = calls, answers, by_value

    def options(self, _by_reference: bool = True) -> Handle:
        return Handle(self.calls, self.answers, by_value=not _by_reference)

    def __getattr__(self, method: str):
        handle = self

        class Method:
            @staticmethod
            def remote(argument, *rest):
                handle.calls.append(("value" if handle.by_value else "reference", method))
                if isinstance(argument, Response):  # a chained call: Ray resolves it before the method runs
                    argument = argument.value
                return Response(handle.answers[method](argument))

        return Method


def prepared_of(side: int) -> PreparedImage:
    pixels = np.zeros((side, side, 3), np.uint8)
    geometry = Geometry(original=(side, side), scaled=(side, side), padded=(side, side))
    return PreparedImage(pixels=pixels, geometry=geometry, options=SegmentOptions(model="m"))


def segmentation_of(side: int) -> Segmentation:
    return Segmentation(
        labels=np.zeros((side, side), np.uint8),
        options=SegmentOptions(model="m"),
        original=None,
        timings_ms={},
        batch_size=1,
    )


def run(body, prepared_side: int, labels_side: int) -> list:
    calls: list = []
    answers = {
        "prepare": lambda body: prepared_of(prepared_side),
        "segment": lambda prepared: segmentation_of(labels_side),
        "encode": lambda segmentation: "answer",
    }
    models = SplitModels(Handle(calls, answers), {"m": Handle(calls, answers)})
    spec = type("Spec", (), {"name": "m"})()
    assert asyncio.run(models.segment(body, "image/png", SegmentOptions(model="m"), spec)) == "answer"
    return calls


def test_small_arguments_go_by_value_and_large_ones_by_reference():
    small, large = b"x" * 1000, b"x" * (BY_VALUE_MAX_BYTES + 1)
    assert run(small, 128, 256) == [("value", "prepare"), ("value", "segment"), ("value", "encode")]
    # A small file that decodes to many pixels: its pixels and its label map go through the object store.
    assert run(small, 2000, 2000) == [("value", "prepare"), ("reference", "segment"), ("reference", "encode")]
    # A large body never comes through the ingress as pixels: prepare is chained into segment.
    assert run(large, 128, 256) == [("reference", "prepare"), ("reference", "segment"), ("value", "encode")]


def test_carried_bytes_counts_arrays_and_bytes_inside_results():
    assert carried_bytes(b"abc") == 3 and carried_bytes(ImageTensor(np.zeros((4, 4, 3), np.uint8))) == 48
    assert carried_bytes(prepared_of(10)) == 300
    with_original = segmentation_of(10)
    with_original.original = np.zeros((10, 10, 3), np.uint8)
    with_original.segments = [{"id": 1, "area": 5}]
    assert carried_bytes(with_original) == 100 + 300
    assert carried_bytes([np.zeros(3, np.int64), {"k": b"12"}]) == 24 + 2 and carried_bytes("text") == 0
