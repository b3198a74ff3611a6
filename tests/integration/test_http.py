"""The HTTP API against a real Ray Serve: results, equality with the direct model call, batching, errors."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from service.imaging.encode import decode_label_png, decode_rle
from service.training.semantic import held_out_seeds
from service.training.shapes import make_sample
from tests.conftest import jpeg_bytes, png_bytes, png_declaring
from tests.integration.helpers import direct_labels

pytestmark = pytest.mark.integration
MODEL = "unet-shapes"


def segment(client, body: bytes, params: str = "", content_type: str = "image/png", **kw):
    return client.post(
        f"/v1/models/{MODEL}/segment{params}", content=body, headers={"content-type": content_type, **kw}
    )


def mask_of(response) -> np.ndarray:
    return decode_label_png(base64.b64decode(response.json()["mask"]["data"]))


def astronaut_jpeg() -> bytes:
    from skimage import data

    return jpeg_bytes(data.astronaut())


def test_health_and_models(service, repository):
    with service.http() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["models"][0]["model"] == MODEL
        # Which models borrow idle cores: none that does not ask (deployment.borrow_idle_cores off).
        borrows = {m["model"]: m["borrows_idle_cores"] for m in ready.json()["models"]}
        assert set(borrows) == set(repository.names())
        unasked = [n for n in borrows if not repository.get(n).deployment.borrow_idle_cores]
        assert unasked and not any(borrows[n] for n in unasked), borrows
        models = c.get("/v1/models").json()["models"]
        assert [m["name"] for m in models] == sorted(repository.names())
        info = c.get(f"/v1/models/{MODEL}").json()
    spec = repository.get(MODEL)
    assert info["task"] == "semantic"
    assert [(k["id"], k["name"], tuple(k["color"])) for k in info["classes"]] == [
        (c.id, c.name, c.color) for c in spec.classes
    ]
    assert info["input"]["size"] == spec.input.size and len(info["weights_digest"]) == 12


def test_real_photograph_jpeg(service, repository):
    body = astronaut_jpeg()
    with service.http() as c:
        r = segment(c, body, content_type="image/jpeg")
    assert r.status_code == 200, r.text
    result = r.json()
    assert (result["width"], result["height"]) == (512, 512)
    mask = mask_of(r)
    assert mask.shape == (512, 512) and mask.dtype == np.uint8
    assert sum(c["pixels"] for c in result["classes"]) == 512 * 512
    assert set(result["timings_ms"]) >= {
        "decode",
        "preprocess",
        "queue",
        "forward",
        "postprocess",
        "encode",
        "total",
    }
    np.testing.assert_array_equal(mask, direct_labels(repository, MODEL, body))


def test_synthetic_image_matches_direct_call_and_ground_truth(service, repository):
    """Pixel-for-pixel equal to the direct call, and as good as the model against ground truth."""
    accuracies = []
    with service.http() as c:
        for seed in held_out_seeds(6):
            sample = make_sample(seed, (192, 256))
            body = png_bytes(sample.image)
            r = segment(c, body)
            assert r.status_code == 200, r.text
            mask = mask_of(r)
            np.testing.assert_array_equal(mask, direct_labels(repository, MODEL, body))
            accuracies.append((mask == sample.semantic).mean())
    assert np.mean(accuracies) >= 0.95, accuracies


def test_output_variants(service):
    sample = make_sample(7, (100, 150))
    body = png_bytes(sample.image)
    with service.http() as c:
        png = segment(c, body)
        bare = segment(c, body, accept="image/png")
        rle = segment(c, body, "?format=rle")
        raw = segment(c, body, "?format=raw")
        overlay = segment(c, body, "?overlay=true")
        multipart = c.post(f"/v1/models/{MODEL}/segment", files={"image": ("x.png", body, "image/png")})
    labels = mask_of(png)
    assert bare.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(decode_label_png(bare.content), labels)
    rebuilt = np.zeros_like(labels)
    for item in rle.json()["mask"]["rle"]:
        rebuilt[decode_rle(item["rle"])] = item["class_id"]
    np.testing.assert_array_equal(rebuilt, labels)
    raw_mask = raw.json()["mask"]
    decoded = np.frombuffer(base64.b64decode(raw_mask["data"]), dtype=raw_mask["dtype"]).reshape(
        raw_mask["shape"]
    )
    np.testing.assert_array_equal(decoded, labels)
    picture = Image.open(io.BytesIO(base64.b64decode(overlay.json()["overlay"]["data"])))
    assert picture.size == (150, 100) and picture.mode == "RGB"
    assert multipart.status_code == 200
    np.testing.assert_array_equal(mask_of(multipart), labels)


def test_concurrent_requests_batch_and_stay_correct(service, repository):
    """32 at once: all answered correctly, and the segmenter formed batches larger than 1."""
    samples = [make_sample(seed, (128, 128)) for seed in held_out_seeds(32)]
    bodies = [png_bytes(s.image) for s in samples]
    with service.http() as c, ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda b: segment(c, b), bodies))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    assert max(r.json()["batch_size"] for r in responses) > 1
    for r, body in zip(responses, bodies, strict=True):
        # A batched forward may round differently from a batch of one in the last float bits, so
        # an argmax tie can flip on a boundary pixel: allow at most 0.1 % of pixels to differ.
        agreement = (mask_of(r) == direct_labels(repository, MODEL, body)).mean()
        assert agreement >= 0.999
        assert r.headers["x-batch-size"] == str(r.json()["batch_size"])


def ppm_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PPM")
    return buf.getvalue()


BAD_REQUESTS = [
    # (what, path suffix, body, content type, expected status, expected error code)
    ("empty body", "", b"", "image/png", 400, "invalid_image"),
    ("not an image", "", b"hello, not an image", "image/png", 400, "invalid_image"),
    ("truncated JPEG", "", "truncated_jpeg", "image/jpeg", 400, "invalid_image"),
    ("truncated PNG", "", "truncated_png", "image/png", 400, "invalid_image"),
    ("text content type", "", "good_png", "text/plain", 415, "unsupported_media_type"),
    ("unsupported format (PPM)", "", "ppm", "image/x-portable-pixmap", 415, "unsupported_media_type"),
    ("declares 100000x100000", "", "bomb", "image/png", 413, "payload_too_large"),
    ("unknown option", "?colour=red", "good_png", "image/png", 400, "invalid_argument"),
    ("unknown format", "?format=jpeg", "good_png", "image/png", 400, "invalid_argument"),
    ("malformed overlay", "?overlay=maybe", "good_png", "image/png", 400, "invalid_argument"),
    ("malformed multipart", "", b"--xyz\r\nnot a part", "multipart/form-data; boundary=xyz", 400, None),
]


def _body(kind, good: bytes, good_jpeg: bytes):
    return (
        {
            "good_png": good,
            "truncated_jpeg": good_jpeg[: len(good_jpeg) // 2],
            "truncated_png": good[: len(good) // 2],
            "ppm": ppm_bytes(),
            "bomb": png_declaring(100_000, 100_000),
        }.get(kind, kind)
        if isinstance(kind, str)
        else kind
    )


@pytest.mark.parametrize(("what", "suffix", "body", "content_type", "status", "code"), BAD_REQUESTS)
def test_bad_input_gets_its_status_and_service_keeps_serving(
    service, what, suffix, body, content_type, status, code
):
    good = png_bytes(make_sample(3, (96, 128)).image)
    good_jpeg = jpeg_bytes(make_sample(3, (96, 128)).image)
    with service.http() as c:
        r = segment(c, _body(body, good, good_jpeg), suffix, content_type)
        assert r.status_code == status, (what, r.status_code, r.text)
        error = r.json()["error"]
        assert error["message"] and error["request_id"]
        if code:
            assert error["code"] == code
        assert segment(c, good).status_code == 200  # and it keeps serving


def test_unknown_model_and_body_limit(service):
    with service.http() as c:
        r = c.post("/v1/models/no-such-model/segment", content=b"x")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert "unet-shapes" in r.json()["error"]["message"]
        assert c.get("/v1/models/no-such-model").status_code == 404
        too_big = b"\0" * (32 * 1024 * 1024 + 1)
        r = segment(c, too_big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
