"""The codec's two steps as pure functions: bytes -> model input, and segmentation -> encoded answer.

``deployments/codec.py`` wraps these in Ray Serve; tests call them directly.
"""

from __future__ import annotations

import time

import numpy as np

from service.config import Limits, ModelSpec
from service.errors import InvalidArgument, PayloadTooLarge
from service.imaging.decode import check_content_type, decode_image
from service.imaging.encode import (
    class_pixel_counts,
    encode_class_polygons,
    encode_class_rles,
    encode_label_png,
    encode_rgb_png,
)
from service.imaging.geometry import Geometry, fit_to_policy
from service.imaging.instance import Instances, class_pixels, describe_instances
from service.imaging.overlay import blend_overlay, palette
from service.imaging.tiling import scale_for_tiles, wants_tiles
from service.types import (
    ClassPresence,
    ImageInput,
    ImageTensor,
    PreparedImage,
    Segmentation,
    SegmentOptions,
    SegmentResult,
)


def prepare_image(
    body: ImageInput, content_type: str | None, options: SegmentOptions, spec: ModelSpec, limits: Limits
) -> PreparedImage:
    """Decode, orient, convert to RGB and fit to the model's input policy (pixels: ``prepare_tensor``)."""
    if isinstance(body, ImageTensor):
        return prepare_tensor(body, options, spec, limits)
    t0 = time.perf_counter()
    check_format(spec, options)
    check_content_type(content_type)
    image = decode_for_model(body, spec, limits)
    t1 = time.perf_counter()
    # Large images of a model with a tile policy keep their resolution (at the tile scale): the model's
    # worker cuts them into tiles. Others are fitted to the input policy as one model input.
    tiled = wants_tiles(image.shape[0], image.shape[1], spec.input)
    pixels, geometry = scale_for_tiles(image, spec.input) if tiled else fit_to_policy(image, spec.input)
    t2 = time.perf_counter()
    return PreparedImage(
        pixels=pixels,
        geometry=geometry,
        options=options,
        original=image if options.overlay else None,
        timings_ms={"decode": (t1 - t0) * 1000, "preprocess": (t2 - t1) * 1000},
        tiled=tiled,
    )


def prepare_tensor(
    image: ImageTensor, options: SegmentOptions, spec: ModelSpec, limits: Limits
) -> PreparedImage:
    """Pixels that need no decoding. uint8 RGB is fitted to the input policy like a decoded image, so
    the label map has its size; an already normalized float32 tensor is the network's input as it is,
    so its sides must be multiples of ``size_divisor`` and the label map has the tensor's size."""
    t0 = time.perf_counter()
    check_format(spec, options)
    height, width = image.pixels.shape[:2]
    check_pixels(height, width, spec, limits)
    tiled = False
    if image.normalized:
        d = spec.input.size_divisor
        if height % d or width % d:
            raise InvalidArgument(
                f"an FP32 (already normalized) image is the network's input as it is: its height and width "
                f"must be multiples of {d} for model {spec.name!r}, got {height}x{width}"
            )
        pixels, geometry = image.pixels, Geometry((height, width), (height, width), (height, width))
    else:
        tiled = wants_tiles(height, width, spec.input)
        fit = scale_for_tiles if tiled else fit_to_policy
        pixels, geometry = fit(image.pixels, spec.input)
    original = image.pixels if options.overlay and not image.normalized else None
    timings = {"preprocess": (time.perf_counter() - t0) * 1000}  # no decode: its histogram stays honest
    return PreparedImage(
        pixels=pixels, geometry=geometry, options=options, original=original, timings_ms=timings, tiled=tiled
    )


def check_pixels(height: int, width: int, spec: ModelSpec, limits: Limits) -> None:
    """A tensor's size under the app's pixel limit and the model's ``input.max_pixels`` (413)."""
    if height * width > limits.max_image_pixels:
        raise PayloadTooLarge(
            f"image of {width}x{height} pixels is over the limit of {limits.max_image_pixels} pixels"
        )
    limit = spec.input.max_pixels
    if limit is not None and height * width > limit:
        raise over_model_limit(f"image of {width}x{height} pixels", spec)


def over_model_limit(what: str, spec: ModelSpec) -> PayloadTooLarge:
    """413 for an image over the model's own ``input.max_pixels`` (under the app's limit)."""
    return PayloadTooLarge(
        f"{what}: model {spec.name!r} segments images of up to {spec.input.max_pixels} pixels "
        "(its input.max_pixels)"
    )


def decode_for_model(body: bytes, spec: ModelSpec, limits: Limits) -> np.ndarray:
    """``decode_image`` under the smaller of the app's pixel limit and the model's ``input.max_pixels``,
    both checked from the header before any decoding (413 naming the limit that refused it)."""
    limit = spec.input.max_pixels
    if limit is None or limit >= limits.max_image_pixels:
        return decode_image(body, max_pixels=limits.max_image_pixels)
    try:
        return decode_image(body, max_pixels=limit)
    except PayloadTooLarge as e:
        raise over_model_limit(str(e), spec) from None


def check_format(spec: ModelSpec, options: SegmentOptions) -> None:
    """Refuse, before any work, a format the model's task has no answer in (400)."""
    if spec.task == "instance" and options.format == "coco_panoptic":
        raise InvalidArgument(
            f"format coco_panoptic is for panoptic models; {spec.name!r} is an instance model (its masks "
            "may overlap, a panoptic PNG cannot hold that): use rle for COCO instance results, or png, "
            "polygons, raw"
        )


def encode_result(segmentation: Segmentation, spec: ModelSpec) -> SegmentResult:
    """Encode the label map (and panoptic segments) as the caller asked."""
    if segmentation.instances is not None:
        return encode_instance_result(segmentation, segmentation.instances, spec)
    t0 = time.perf_counter()
    options = segmentation.options
    labels = segmentation.labels
    height, width = labels.shape
    names = {c.id: c.name for c in spec.classes}
    counts = class_pixel_counts(labels, spec.num_classes)
    result = SegmentResult(
        model=spec.name,
        task=spec.task,
        width=width,
        height=height,
        classes=[ClassPresence(i, names.get(i, str(i)), n) for i, n in sorted(counts.items())],
        mask_format=options.format,
        batch_size=segmentation.batch_size,
        request_id=options.request_id,
        mask_dtype=str(labels.dtype),
    )
    panoptic = segmentation.panoptic
    if panoptic is not None:
        result.segments = segmentation.segments
    # The mask payload: the semantic label map, or for panoptic models the COCO id PNG.
    if options.format == "png":
        result.mask_png = encode_label_png(labels) if panoptic is None else _panoptic_png(panoptic)
    elif options.format == "raw":
        result.mask_raw = np.ascontiguousarray(labels).tobytes()
        if panoptic is not None:
            result.panoptic_raw = np.ascontiguousarray(panoptic, np.int32).tobytes()
    elif options.format == "rle":
        result.rle = encode_class_rles(labels, counts.keys())
    elif options.format == "polygons":
        result.polygons = encode_class_polygons(labels, counts.keys())
    elif options.format == "coco_panoptic":
        result.mask_png = _panoptic_png(panoptic) if panoptic is not None else encode_label_png(labels)
    if options.overlay and segmentation.original is not None:
        if panoptic is not None:
            # Palette of one (void = 0, left as the image): every segment id past it gets its own
            # deterministic instance colour from blend_overlay.
            blended = blend_overlay(segmentation.original, panoptic, palette([(0, 0, 0)]))
        else:
            blended = blend_overlay(segmentation.original, labels, palette([c.color for c in spec.classes]))
        result.overlay_png = encode_rgb_png(blended)
    result.timings_ms = {**segmentation.timings_ms, "encode": (time.perf_counter() - t0) * 1000}
    return result


def encode_instance_result(
    segmentation: Segmentation, instances: Instances, spec: ModelSpec
) -> SegmentResult:
    """An instance model's answer: the ``instances`` list (with per-instance RLE or polygons for those
    formats), the instance id map as PNG (``png``) or bytes (``raw``), instances coloured in the overlay.

    ``classes`` counts, per class, the pixels of the instances that own them in the id map.
    """
    t0 = time.perf_counter()
    options, ids = segmentation.options, segmentation.labels
    names = {c.id: c.name for c in spec.classes}
    result = SegmentResult(
        model=spec.name,
        task=spec.task,
        width=instances.width,
        height=instances.height,
        classes=[ClassPresence(c, names.get(c, str(c)), n) for c, n in class_pixels(instances, ids).items()],
        mask_format=options.format,
        batch_size=segmentation.batch_size,
        request_id=options.request_id,
        mask_dtype=str(ids.dtype),
        instances=describe_instances(instances, names, options.format),
    )
    if options.format == "png":
        result.mask_png = encode_label_png(ids)
    elif options.format == "raw":
        result.mask_raw = np.ascontiguousarray(ids).tobytes()
    if options.overlay and segmentation.original is not None:
        # As panoptic: background (0) left as the image, each instance id its own colour.
        result.overlay_png = encode_rgb_png(blend_overlay(segmentation.original, ids, palette([(0, 0, 0)])))
    result.timings_ms = {**segmentation.timings_ms, "encode": (time.perf_counter() - t0) * 1000}
    return result


def _panoptic_png(panoptic: np.ndarray) -> bytes:
    from service.imaging.panoptic_format import encode_panoptic_png

    return encode_panoptic_png(panoptic)
