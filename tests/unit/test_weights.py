"""Weights load only from safetensors; pickle files are refused without being opened as pickle."""

import pickle

import pytest
import torch

from service.models.registry import WeightsError, load_weights, save_weights
from service.models.unet import build_unet


def test_safetensors_round_trip(tmp_path):
    model = build_unet(num_classes=3, depth=2, base_width=4)
    save_weights(model, tmp_path / "w.safetensors")
    other = build_unet(num_classes=3, depth=2, base_width=4)
    load_weights(other, tmp_path / "w.safetensors")
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_pickle_files_are_refused(tmp_path):
    model = build_unet(num_classes=3, depth=2, base_width=4)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(WeightsError, match=r"only \.safetensors"):
        load_weights(model, path)


def test_a_pickle_disguised_as_safetensors_is_not_unpickled(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(WeightsError, match=r"pickle / torch\.save file: refused, never loaded"):
        load_weights(build_unet(num_classes=3, depth=2, base_width=4), path)


def test_weights_of_another_architecture_are_refused(tmp_path):
    save_weights(build_unet(num_classes=3, depth=2, base_width=4), tmp_path / "w.safetensors")
    with pytest.raises(WeightsError, match="do not fit"):
        load_weights(build_unet(num_classes=5, depth=2, base_width=4), tmp_path / "w.safetensors")
