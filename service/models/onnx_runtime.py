"""ONNX models run by ONNX Runtime, behind the ``nn.Module`` face the runner uses.

The model is read as one self-contained file (``external_data=False`` at export): the session is made
from its bytes, so no other file is opened on the model's behalf. ONNX Runtime parses a protobuf
graph of standard operators; nothing in the file is unpickled or run as Python. The CPU provider
always; the CUDA provider when the replica's device is a GPU (that needs the ``onnxruntime-gpu``
wheel in the image instead of ``onnxruntime``; without it a GPU replica refuses to start rather than
silently running on the CPU).

The entry's declarations are checked against the graph when the session is made: one float input
``[N, 3, H, W]`` with a dynamic batch axis (unless ``max_batch_size`` is 1), fixed spatial sizes only
with ``input.mode: resize`` at that size, and the scores output named by ``output.key`` when the
graph has several.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from service.config import ModelSpec
from service.models.registry import EntryError, WeightsError, refuse_pickle

DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class OnnxModule(nn.Module):
    """Calls an ONNX Runtime session: float [N, 3, H, W] on any device in, scores on that device out."""

    def __init__(self, path: Path, spec: ModelSpec) -> None:
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"{path}: weights file not found")
        refuse_pickle(path)
        self.path = path
        self.model_bytes = path.read_bytes()
        self.spec = spec
        self.device = torch.device("cpu")
        self.session = self._session(self.device)
        self._check_signature()

    def _session(self, device: torch.device) -> ort.InferenceSession:
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise EntryError(
                    "deployment.device",
                    f"model {self.spec.name!r} runs on a GPU but this onnxruntime has no CUDA provider "
                    "(install onnxruntime-gpu in the image, or set deployment.device: cpu)",
                )
            providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), *providers]
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.spec.deployment.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # A replica shares its CPUs with its peers: idle threads sleep instead of spinning.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(self.model_bytes, sess_options=options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for a bad or corrupt model
            raise WeightsError(f"{self.path}: not a loadable ONNX model: {type(e).__name__}: {e}") from None

    def _check_signature(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise EntryError(
                "weights", f"{self.path}: the graph has {len(inputs)} inputs; one image batch expected"
            )
        (image,) = inputs
        self.input_name = image.name
        if image.type not in DTYPES:
            raise EntryError("weights", f"{self.path}: input {image.name!r} is {image.type}, not float")
        self.input_dtype = DTYPES[image.type]
        shape = image.shape
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise EntryError("weights", f"{self.path}: input {image.name!r} is {shape}, not [N, 3, H, W]")
        if isinstance(shape[0], int) and shape[0] != 1:
            raise EntryError(
                "weights", f"{self.path}: input batch fixed at {shape[0]}: export a dynamic batch axis"
            )
        if isinstance(shape[0], int) and self.spec.batching.max_batch_size > 1:
            raise EntryError(
                "batching.max_batch_size",
                f"{self.path}: the input's batch axis is fixed at 1; export it dynamic (docs/models.md) "
                "or set max_batch_size: 1",
            )
        fixed = [d for d in shape[2:] if isinstance(d, int)]
        if fixed:
            policy = self.spec.input
            side = -(-policy.size // policy.size_divisor) * policy.size_divisor
            if policy.mode != "resize" or list(shape[2:]) != [side, side]:
                raise EntryError(
                    "input",
                    f"{self.path}: the input's size is fixed at {shape[2:]}: use input.mode: resize with "
                    f"that size (the entry gives mode {policy.mode}, size {policy.size}, "
                    f"divisor {policy.size_divisor})",
                )
        self.output_names = [o.name for o in outputs]
        key = self.spec.output.key
        if key is None and len(outputs) != 1:
            raise EntryError(
                "output.key", f"{self.path}: the graph's outputs are {self.output_names}: name one"
            )
        if key is not None and key not in self.output_names:
            raise EntryError(
                "output.key", f"{self.path}: the graph's outputs are {self.output_names}, not {key!r}"
            )

    def to(self, *args, **kwargs) -> OnnxModule:
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None and device != self.device:
            self.session = self._session(device)
            self.device = device
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        feed = x.detach().float().cpu().numpy().astype(self.input_dtype, copy=False)
        outputs = self.session.run(None, {self.input_name: feed})
        found = {
            n: torch.from_numpy(np.ascontiguousarray(o)).to(x.device)
            for n, o in zip(self.output_names, outputs, strict=True)
        }
        if self.spec.output.key is None:
            return next(iter(found.values()))
        return found
