"""The entry's input and output conventions reach the network as declared (the runner never guesses)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.config import InputPolicy, ModelSpec
from service.imaging.geometry import pad_value
from service.models.check import check_repository
from service.models.inference import Runner
from service.training.demo_entries import BENCH_MODEL, palette_classes, write_bench_repository
from tests.unit.byom_helpers import prepared, served

CAFFE = {
    "channels": "BGR",
    "pixel_range": "0-255",
    "mean": [103.53, 116.28, 123.675],
    "std": [57.4, 57.1, 58.4],
}


class Recorder(torch.nn.Module):
    """Remembers its input; scores: class 1 where the first input channel is above zero."""

    def __init__(self, as_dict: bool = False) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.as_dict = as_dict

    def forward(self, x):
        self.seen.append(x.clone())
        scores = torch.cat([torch.zeros_like(x[:, :1]), x[:, :1]], 1)
        return {"logits": scores, "aux": -scores} if self.as_dict else scores


def spec(input_policy: dict, output: dict | None = None) -> ModelSpec:
    return ModelSpec.model_validate({
        "name": "rec", "task": "semantic", "architecture": "null", "classes": palette_classes(2),
        "input": {"mode": "pad", "size": 32, "size_divisor": 8, **input_policy}, "output": output or {},
    })  # fmt: skip


def test_bgr_0_255_reaches_the_network_as_declared():
    s = spec(CAFFE)
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), np.uint8)
    recorder = Recorder()
    (labels,) = served(Runner(s, recorder, torch.device("cpu")), [prepared(image, s)])
    x = recorder.seen[0][0, :, :20, :30]
    bgr = torch.from_numpy(image[..., ::-1].copy()).permute(2, 0, 1).float()
    expected = (bgr - torch.tensor(CAFFE["mean"]).view(3, 1, 1)) / torch.tensor(CAFFE["std"]).view(3, 1, 1)
    torch.testing.assert_close(x, expected)
    np.testing.assert_array_equal(labels, (expected[0] > 0).numpy().astype(np.uint8))


def test_padding_normalizes_to_zero_in_every_convention():
    for policy in (InputPolicy(), InputPolicy(**CAFFE), InputPolicy(channels="BGR")):
        s = spec(policy.model_dump(exclude={"mode", "size", "size_divisor"}))
        recorder = Recorder()
        Runner(s, recorder, torch.device("cpu")).run([prepared(np.zeros((20, 30, 3), np.uint8), s)], [0.0])
        padding = recorder.seen[0][0, :, 20:, :]  # rows 20..23 are padding (divisor 8)
        assert padding.abs().max() < 0.02, (policy, padding.abs().max())
    assert pad_value(InputPolicy(**CAFFE)) == (124, 116, 104)  # RGB of the BGR mean


@pytest.mark.parametrize("output", [{"key": "logits"}, {"key": "logits", "kind": "probabilities"}])
def test_dict_output_key_is_taken_and_aux_ignored(output):
    s = spec({}, output)
    image = np.random.default_rng(1).integers(0, 256, (16, 16, 3), np.uint8)
    recorder = Recorder(as_dict=True)
    (labels,) = served(Runner(s, recorder, torch.device("cpu")), [prepared(image, s)])
    assert np.array_equal(labels, (recorder.seen[0][0, 0] > 0).numpy().astype(np.uint8))


def test_bench_repository_is_a_realistic_model_at_512(tmp_path):
    path = write_bench_repository(tmp_path)
    (report,) = check_repository(path, device="cpu")
    assert report.name == BENCH_MODEL and report.architecture == "torchvision.deeplabv3_mobilenet_v3_large"
    assert report.output_shape == (1, 21, 512, 512) and report.parameters > 10_000_000
