"""Building and loading brought models never touches the network (no hub, no timm, no torchvision weights).

A subprocess with every socket connection refused (``socket.connect`` patched to record and raise),
proxies pointed at a dead port, empty torch / Hugging Face caches and ``HF_HUB_OFFLINE`` unset, so a
download attempt would fail loudly: it builds every torchvision and smp architecture the repository
accepts (smp with several encoders, timm's among them) and loads one from safetensors. A control at
the end asks smp for ImageNet encoder weights and must see that attempt fail, proving the trap works.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT

SCRIPT = textwrap.dedent(
    """
    import socket, sys, tempfile
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network disabled in this test: {address}")

    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse

    import torch
    torch.set_num_threads(1)
    from service.config import ModelSpec, SMP_ARCHITECTURES, TORCHVISION_SEGMENTATION
    from service.models.registry import build_model, load_model, save_weights

    def entry(architecture, arguments, output=None):
        return ModelSpec.model_validate({
            "name": "offline", "task": "semantic", "architecture": architecture, "arguments": arguments,
            "weights": "offline.safetensors", "output": output or {},
            "classes": [{"id": i, "name": str(i), "color": [i, i, i]} for i in range(3)],
        })

    built = []
    for architecture in TORCHVISION_SEGMENTATION:
        build_model(entry(architecture, {}, {"key": "out"}))
        built.append(architecture)
    for architecture in SMP_ARCHITECTURES:
        build_model(entry(architecture, {}))  # smp's default encoder, resnet34
        built.append(architecture)
    for encoder in ("mobilenet_v2", "efficientnet-b0", "tu-resnet18", "mit_b0"):
        architecture = "smp.Segformer" if encoder == "mit_b0" else "smp.Unet"
        build_model(entry(architecture, {"encoder_name": encoder}))
        built.append(f"{architecture}/{encoder}")
    spec = entry("smp.Unet", {"encoder_name": "resnet18"})
    path = tempfile.mkdtemp() + "/offline.safetensors"
    save_weights(build_model(spec), __import__("pathlib").Path(path))
    load_model(spec, __import__("pathlib").Path(path))
    print("built", len(built), "attempts", len(attempts), attempts)
    assert not attempts, attempts

    import segmentation_models_pytorch as smp
    try:
        smp.Unet(encoder_name="resnet18", encoder_weights="imagenet")
    except Exception as e:
        print("control refused:", type(e).__name__)
    else:
        sys.exit("control: downloading ImageNet weights did not fail; the trap is not working")
    assert attempts, "control: the download attempt never reached a socket"
    print("control attempts", len(attempts))
    """
)


@pytest.mark.slow
def test_builds_and_loads_with_the_network_unreachable(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("HF_", "TORCH_HOME", "NO_PROXY"))}
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens there
    env.update(
        HTTP_PROXY=dead, HTTPS_PROXY=dead, ALL_PROXY=dead, http_proxy=dead, https_proxy=dead,
        TORCH_HOME=str(tmp_path / "torch"), HF_HOME=str(tmp_path / "hf"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
    )  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "built 21 attempts 0" in result.stdout
    assert "control refused" in result.stdout and "control attempts" in result.stdout
