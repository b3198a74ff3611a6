"""Bring your own model, every family and format: what the runner serves is what the network gives.

For each architecture (random weights, written to and loaded from safetensors as a user's would be)
and each exported format: the runner's label maps, one by one and batched (two input sizes in one
batch), equal the network called by hand on the same prepared input. The resnet101 networks are the
same code as the resnet50 ones at twice the depth: marked slow.
"""

from __future__ import annotations

import pytest
import torch

from service.config import SMP_ARCHITECTURES
from service.models.registry import load_model
from service.models.runners import build_runner
from service.training.demo_entries import random_entry
from service.training.export import export_onnx, export_program
from tests.unit.byom_helpers import assert_labels_match, direct_scores, images, prepared, served, spec_of

PAD32 = {"mode": "pad", "size": 64, "size_divisor": 32}
TORCHVISION = [
    "torchvision.lraspp_mobilenet_v3_large",
    "torchvision.deeplabv3_mobilenet_v3_large",
    "torchvision.fcn_resnet50",
    "torchvision.deeplabv3_resnet50",
    pytest.param("torchvision.fcn_resnet101", marks=pytest.mark.slow),
    pytest.param("torchvision.deeplabv3_resnet101", marks=pytest.mark.slow),
]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def check_contract(spec, weights, reference: torch.nn.Module, scale: int = 1, key: str | None = None) -> None:
    """Served one by one and in one batch (two shapes) == ``reference`` called by hand, per image."""
    runner = build_runner(spec, weights)
    items = [prepared(image, spec) for image in images(scale=scale)]
    batched = served(runner, items)
    assert [r.batch_size for r in runner.run(items, [0.0] * 3)] == [2, 1, 2]  # two groups, one of two
    for item, together in zip(items, batched, strict=True):
        (alone,) = served(runner, [item])
        scores = direct_scores(reference, item, spec, key)
        assert_labels_match(alone, scores)
        assert_labels_match(together, scores)


@pytest.mark.parametrize("architecture", TORCHVISION)
def test_torchvision(tmp_path, architecture):
    entry = random_entry(tmp_path, "tv", architecture, classes=3, input=PAD32, output={"key": "out"})
    spec = spec_of(entry)
    weights = tmp_path / entry["weights"]
    check_contract(spec, weights, load_model(spec, weights))


def test_torchvision_aux_head_is_built_and_ignored(tmp_path):
    entry = random_entry(
        tmp_path,
        "aux",
        "torchvision.fcn_resnet50",
        {"aux_loss": True},
        classes=3,
        input=PAD32,
        output={"key": "out"},
    )
    spec = spec_of(entry)
    model = load_model(spec, tmp_path / entry["weights"])
    assert set(model(torch.zeros(1, 3, 64, 64))) == {"out", "aux"}
    check_contract(spec, tmp_path / entry["weights"], model)


@pytest.mark.parametrize("architecture", SMP_ARCHITECTURES)
def test_smp(tmp_path, architecture):
    # PAN's pyramid pools the 1/32 feature map three more times: it needs inputs of 256 px and more.
    scale = 4 if architecture == "smp.PAN" else 1
    policy = {**PAD32, "size": 64 * scale}
    entry = random_entry(tmp_path, "smp", architecture, {"encoder_name": "resnet18"}, classes=3, input=policy)
    spec = spec_of(entry)
    weights = tmp_path / entry["weights"]
    check_contract(spec, weights, load_model(spec, weights), scale)


def test_smp_other_encoder_by_name(tmp_path):
    """Any encoder by name: a timm one through smp's "tu-" prefix, built offline too."""
    entry = random_entry(
        tmp_path, "tu", "smp.FPN", {"encoder_name": "tu-mobilenetv3_small_100"}, classes=2, input=PAD32
    )
    spec = spec_of(entry)
    weights = tmp_path / entry["weights"]
    check_contract(spec, weights, load_model(spec, weights))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One torchvision network (dict output) exported both ways, and the network itself."""
    folder = tmp_path_factory.mktemp("exported")
    entry = random_entry(
        folder,
        "lraspp",
        "torchvision.lraspp_mobilenet_v3_large",
        classes=3,
        input=PAD32,
        output={"key": "out"},
    )
    torch.set_num_threads(1)
    network = load_model(spec_of(entry), folder / entry["weights"])
    export_program(network, folder / "lraspp.pt2", size=64, key="out")
    export_onnx(network, folder / "lraspp.onnx", size=64, key="out")
    base = {k: v for k, v in entry.items() if k not in ("architecture", "arguments", "output")}
    return folder, base, network


@pytest.mark.parametrize("fmt, file", [("torch_export", "lraspp.pt2"), ("onnx", "lraspp.onnx")])
def test_exported_formats(exported, fmt, file):
    folder, base, network = exported
    spec = spec_of({**base, "name": fmt.replace("_", "-"), "format": fmt, "weights": file})
    check_contract(spec, folder / file, network, key="out")


def test_onnx_session_is_the_reference_too(exported):
    """The served ONNX labels also equal ONNX Runtime called directly (no torch in between)."""
    import numpy as np
    import onnxruntime as ort
    import torch.nn.functional as F

    folder, base, _ = exported
    spec = spec_of({**base, "name": "onnx", "format": "onnx", "weights": "lraspp.onnx"})
    runner = build_runner(spec, folder / "lraspp.onnx")
    session = ort.InferenceSession(str(folder / "lraspp.onnx"), providers=["CPUExecutionProvider"])
    for item in (prepared(image, spec) for image in images()):
        x = (item.pixels.astype(np.float32) / 255 - np.float32(spec.input.mean)) / np.float32(spec.input.std)
        (scores,) = session.run(None, {"image": x.transpose(2, 0, 1)[None]})
        g = item.geometry
        crop = torch.from_numpy(scores[:, :, : g.scaled[0], : g.scaled[1]])
        full = F.interpolate(crop, size=g.original, mode="bilinear", align_corners=False)[0]
        (labels,) = served(runner, [item])
        assert_labels_match(labels, full)
