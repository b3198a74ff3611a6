"""Each way a brought model can be wrong gets a clear error naming the file, the model and the key."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from service.config import ConfigError, OutputSpec, load_repository
from service.models.check import ModelCheckError, check_repository
from service.models.registry import EntryError, WeightsError, load_model, select_output
from service.training.demo_entries import palette_classes, random_entry, write_repository
from tests.conftest import ROOT

SMALL = {"mode": "pad", "size": 64, "size_divisor": 32}


def smp_entry(folder: Path, name: str = "m", classes: int = 3, **changes) -> dict:
    entry = random_entry(
        folder,
        name,
        "smp.Unet",
        {"encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": [32, 16, 8]},
        classes=classes,
        input=SMALL,
    )
    return {**entry, **changes}


def check_error(folder: Path, entries: list[dict]) -> ModelCheckError:
    path = write_repository(folder, entries)
    with pytest.raises(ModelCheckError) as caught:
        check_repository(path, device="cpu")
    assert str(path) in str(caught.value)
    return caught.value


def test_good_entry_passes_the_check(tmp_path):
    (report,) = check_repository(write_repository(tmp_path, [smp_entry(tmp_path)]), device="cpu")
    assert report.output_shape == (1, 3, 64, 64) and report.parameters > 100_000
    assert len(report.weights_digest) == 12 and report.forward_ms > 0


def test_missing_weights(tmp_path):
    entry = {**smp_entry(tmp_path), "weights": "nowhere/model.safetensors"}
    error = check_error(tmp_path, [entry])
    assert error.key == "weights" and "not found" in str(error) and "'m'" in str(error)


def test_corrupt_weights(tmp_path):
    entry = smp_entry(tmp_path)
    path = tmp_path / entry["weights"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    error = check_error(tmp_path, [entry])
    assert error.key == "weights" and "not a valid safetensors file" in str(error)


def test_weights_of_another_architecture_name_the_first_tensor(tmp_path):
    entry = smp_entry(tmp_path)
    other = random_entry(tmp_path, "other", "unet", {"depth": 2, "base_width": 8}, classes=3)
    error = check_error(tmp_path, [{**entry, "weights": other["weights"]}])
    assert error.key == "weights"
    assert "the file has no tensor 'encoder.conv1.weight'; the file has 'head.bias' instead" in str(error)


def test_wrong_class_count_names_the_head_tensor(tmp_path):
    trained_for_3 = smp_entry(tmp_path)
    entry = {**trained_for_3, "classes": palette_classes(4)}
    error = check_error(tmp_path, [entry])
    assert error.key == "weights"
    assert "tensor 'segmentation_head.0.weight' has shape (3, 8, 3, 3) in the file" in str(error)
    assert "wants (4, 8, 3, 3)" in str(error)


def test_wrong_class_count_of_an_exported_model(tmp_path):
    """An ONNX graph carries its own head: the check compares its score channels with the class list."""
    export_tiny_onnx(tmp_path / "tiny.onnx", channels=3)
    entry = onnx_entry("tiny.onnx", classes=4)
    error = check_error(tmp_path, [entry])
    assert error.key == "classes" and "3 score channels" in str(error) and "4 classes" in str(error)


def test_path_leaving_the_repository(tmp_path):
    entry = {**smp_entry(tmp_path / "repo"), "weights": "../elsewhere/model.safetensors"}
    path = write_repository(tmp_path / "repo", [entry])
    with pytest.raises(ConfigError, match="escapes"):
        load_repository(path)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "models",
            "check",
            "--repository",
            str(path),
            "--device",
            "cpu",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and str(path) in result.stderr and "escapes" in result.stderr


def test_pickle_suffix_is_refused_by_the_config(tmp_path):
    entry = {**smp_entry(tmp_path), "weights": "m/model.pt"}
    with pytest.raises(ConfigError, match=r"format pytorch needs a \.safetensors weights file"):
        load_repository(write_repository(tmp_path, [entry]))


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickle_renamed_safetensors_is_refused_never_loaded(tmp_path, how):
    """A pickle that would create a file when unpickled, named like safetensors: refused by its bytes."""
    entry = smp_entry(tmp_path)
    marker = tmp_path / "unpickled"
    path = tmp_path / entry["weights"]
    if how == "pickle":
        path.write_bytes(pickle.dumps(_Payload(str(marker)), protocol=4))
    else:
        torch.save({"x": _Payload(str(marker))}, path)
    error = check_error(tmp_path, [entry])
    assert error.key == "weights" and "pickle" in str(error) and "never loaded" in str(error)
    assert not marker.exists()


# --- output and input declarations -------------------------------------------------------------------


def test_torchvision_entry_must_name_its_output_key(tmp_path):
    entry = {**smp_entry(tmp_path), "architecture": "torchvision.lraspp_mobilenet_v3_large", "arguments": {}}
    with pytest.raises(ConfigError, match=r"returns a dict .*set output\.key"):
        load_repository(write_repository(tmp_path, [entry]))


def test_output_key_on_a_tensor_output(tmp_path):
    error = check_error(tmp_path, [{**smp_entry(tmp_path), "output": {"key": "out"}}])
    assert error.key == "output.key" and "returns a tensor" in str(error)


def test_select_output_names_the_keys():
    with pytest.raises(EntryError, match=r"outputs are \['aux', 'out'\], not 'logits'"):
        select_output(
            {"out": torch.zeros(1, 2, 4, 4), "aux": torch.zeros(1, 2, 4, 4)}, OutputSpec(key="logits")
        )
    with pytest.raises(EntryError, match=r"set output\.key"):
        select_output({"out": torch.zeros(1, 2, 4, 4)}, OutputSpec())


def test_declared_probabilities_must_be_probabilities(tmp_path):
    error = check_error(tmp_path, [{**smp_entry(tmp_path), "output": {"kind": "probabilities"}}])
    assert error.key == "output.kind"


def test_smp_size_divisor_must_fit_the_encoder(tmp_path):
    entry = random_entry(tmp_path, "seg", "smp.Segformer", {"encoder_name": "resnet18"}, classes=2,
                         input={**SMALL, "size_divisor": 16})  # fmt: skip
    error = check_error(tmp_path, [entry])
    assert error.key == "input.size_divisor" and "multiples of 32" in str(error)


@pytest.mark.parametrize(
    "argument", [{"encoder_weights": "imagenet"}, {"classes": 5}, {"activation": "softmax"}]
)
def test_smp_fixed_arguments_are_refused(tmp_path, argument):
    entry = {**smp_entry(tmp_path), "arguments": {"encoder_name": "resnet18", **argument}}
    error = check_error(tmp_path, [entry])
    assert error.key == "arguments" and "cannot be set" in str(error)


def test_unknown_encoder_is_an_arguments_error(tmp_path):
    entry = {**smp_entry(tmp_path), "arguments": {"encoder_name": "resnet19"}}
    error = check_error(tmp_path, [entry])
    assert error.key == "arguments" and "resnet19" in str(error)


def test_exported_formats_have_no_architecture_and_match_their_suffix(tmp_path):
    base = {"name": "x", "task": "semantic", "classes": palette_classes(2)}
    bad = [
        ({**base, "format": "onnx", "weights": "x.safetensors"}, r"format onnx needs a \.onnx"),
        ({**base, "format": "torch_export", "weights": "x.onnx"}, r"needs a \.pt2"),
        ({**base, "format": "onnx", "weights": "x.onnx", "architecture": "unet"}, "give no architecture"),
        ({**base, "format": "pytorch", "weights": "x.safetensors"}, "needs an architecture"),
    ]
    for entry, message in bad:
        with pytest.raises(ConfigError, match=message):
            load_repository(write_repository(tmp_path, [entry]))


# --- ONNX graphs that do not fit the entry ----------------------------------------------------------


class _TwoHeads(torch.nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, channels, 1)
        self.b = torch.nn.Conv2d(3, channels, 1)

    def forward(self, x):
        return self.a(x), self.b(x)


def export_tiny_onnx(
    path: Path, channels: int, dynamic_batch: bool = True, two_outputs: bool = False
) -> None:
    """A 1x1 convolution exported by torch's TorchScript-based exporter: fast, enough for error cases."""
    model = _TwoHeads(channels) if two_outputs else torch.nn.Conv2d(3, channels, 1)
    names = ["a", "b"] if two_outputs else ["scores"]
    axes = {"image": {2: "h", 3: "w", **({0: "n"} if dynamic_batch else {})}}
    torch.onnx.export(
        model.eval(), (torch.zeros(1, 3, 32, 32),), str(path), input_names=["image"], output_names=names,
        dynamic_axes=axes, dynamo=False,
    )  # fmt: skip


def onnx_entry(weights: str, classes: int = 3, **more) -> dict:
    return {"name": "o", "task": "semantic", "format": "onnx", "weights": weights,
            "classes": palette_classes(classes), "input": SMALL, **more}  # fmt: skip


def test_onnx_fixed_batch_axis_with_batching(tmp_path):
    export_tiny_onnx(tmp_path / "fixed.onnx", channels=3, dynamic_batch=False)
    error = check_error(tmp_path, [onnx_entry("fixed.onnx")])
    assert error.key == "batching.max_batch_size" and "export it dynamic" in str(error)
    ok = onnx_entry("fixed.onnx", batching={"max_batch_size": 1})
    assert check_repository(write_repository(tmp_path, [ok]), device="cpu")[0].output_shape == (1, 3, 64, 64)


def test_onnx_several_outputs_need_a_key(tmp_path):
    export_tiny_onnx(tmp_path / "two.onnx", channels=3, two_outputs=True)
    error = check_error(tmp_path, [onnx_entry("two.onnx")])
    assert error.key == "output.key" and "['a', 'b']" in str(error)
    ok = onnx_entry("two.onnx", output={"key": "b"})
    assert check_repository(write_repository(tmp_path, [ok]), device="cpu")


def test_onnx_garbage_file(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all" * 10)
    error = check_error(tmp_path, [onnx_entry("junk.onnx")])
    assert error.key == "weights" and "not a loadable ONNX model" in str(error)


# --- the command line ----------------------------------------------------------------------------------


def test_cli_prints_parameters_digest_and_time(tmp_path):
    path = write_repository(tmp_path, [smp_entry(tmp_path, "good")])
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "models", "check", "--repository", str(path), "--json", "good"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["name"] == "good" and report["parameters"] > 0 and report["forward_ms"] > 0
    assert report["output_shape"] == [1, 3, 64, 64] and report["architecture"] == "smp.Unet"


def test_cli_bad_entry_exits_non_zero_naming_file_model_and_key(tmp_path):
    entry = {**smp_entry(tmp_path, "bad"), "output": {"key": "out"}}
    path = write_repository(tmp_path, [entry])
    env = {k: v for k, v in os.environ.items()}
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "models", "check", "--repository", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"{path}: model 'bad': output.key:" in result.stderr


def test_load_model_refuses_a_missing_artefact(tmp_path):
    entry = onnx_entry("absent.onnx")
    spec = load_repository(write_repository(tmp_path, [entry])).get("o")
    with pytest.raises(WeightsError, match="not found"):
        load_model(spec, tmp_path / "absent.onnx")


def test_shipped_repository_yaml_is_valid():
    assert yaml.safe_load((ROOT / "models" / "repository.yaml").read_text())["models"]
    load_repository(ROOT / "models" / "repository.yaml")


def test_onnx_with_external_data_is_refused(tmp_path):
    """The session is made from the file's bytes: an ONNX file pointing at other files does not load."""
    import onnx

    export_tiny_onnx(tmp_path / "inline.onnx", channels=3)
    model = onnx.load(str(tmp_path / "inline.onnx"))
    onnx.save_model(
        model,
        str(tmp_path / "split.onnx"),
        save_as_external_data=True,
        location="split.data",
        size_threshold=0,
    )
    assert (tmp_path / "split.data").exists()
    error = check_error(tmp_path, [onnx_entry("split.onnx")])
    assert error.key == "weights" and "not a loadable ONNX model" in str(error)
