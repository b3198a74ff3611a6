"""The label maps each system returns, against the model called directly with the service's own
functions (``PeerPipeline`` in this process, batch 1): every system under test must give the same
map to the pixel for every image, or the run fails (its throughput would not be for the same work).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from loadtests.images import TestImage

LabelMaps = dict[str, str | np.ndarray]  # image name -> label map, or why there is none


def direct(repository: Path, model: str, images: Sequence[TestImage]) -> LabelMaps:
    """The reference: ``prepare_image`` -> runner -> ``encode_result`` here, one image at a time."""
    from loadtests.peers.pipeline import PeerPipeline

    pipeline = PeerPipeline(repository, model)
    return {i.name: decode(pipeline.segment(i.data, i.content_type)) for i in images}


def fetch(url: str, model: str, images: Sequence[TestImage], timeout_s: float = 60) -> LabelMaps:
    """Each image's label map from a system under test (``Accept: image/png``), one at a time."""
    import httpx

    out: LabelMaps = {}
    with httpx.Client(base_url=url, timeout=timeout_s) as client:
        for image in images:
            headers = {"content-type": image.content_type, "accept": "image/png"}
            try:
                r = client.post(f"/v1/models/{model}/segment", content=image.data, headers=headers)
                out[image.name] = decode(r.content) if r.status_code == 200 else f"HTTP {r.status_code}"
            except (httpx.HTTPError, OSError) as e:
                out[image.name] = f"{type(e).__name__}: {e}"
    return out


def decode(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image)


def compare(reference: LabelMaps, got: LabelMaps) -> list[str]:
    """Why each image's map differs from the reference (empty: all equal)."""
    problems = []
    for name, want in reference.items():
        have = got.get(name, "no answer")
        if isinstance(have, str):
            problems.append(f"{name}: {have}")
        elif not isinstance(want, np.ndarray) or have.shape != want.shape:
            problems.append(f"{name}: shape {have.shape}, expected {getattr(want, 'shape', want)}")
        elif not np.array_equal(have, want):
            problems.append(f"{name}: {int((have != want).sum())} of {want.size} pixels differ")
    return problems


def check(url: str, model: str, images: Sequence[TestImage], reference: LabelMaps) -> dict:
    """``{"images": n, "mismatches": [...]}`` for one system and model."""
    return {"images": len(images), "mismatches": compare(reference, fetch(url, model, images))}


def failures(results: dict) -> list[str]:
    """Why the run failed: a system whose label maps differ, or a peer that did not run."""
    out = [f"ours {m}: {x}" for m, c in results.get("label_maps", {}).items() for x in c["mismatches"]]
    for run in results.get("peers", []):
        name = f"{run['peer']} {run['model']}"
        out += [f"{name}: {x}" for x in (run.get("label_maps") or {}).get("mismatches", [])]
        out += [f"{name}: did not run"] if run.get("error") else []
    return out
