"""``torch.export`` archives are audited before ``torch.export.load`` sees them.

A .pt2 can make ``torch.export.load`` unpickle, ``eval`` a shape expression, or ``exec`` guard code
(see service/models/exported.py). Each test takes a good archive, plants one such thing in it, and
checks the audit refuses it before anything runs, or (guards) that the loader never runs it.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from service.models.exported import audit_program, load_program
from service.models.registry import WeightsError


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x) * 2


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "tiny.pt2"
    torch.manual_seed(0)
    dims = {
        "x": {0: torch.export.Dim("batch", max=64), 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    }
    torch.export.save(
        torch.export.export(Tiny().eval(), (torch.zeros(2, 3, 16, 16),), dynamic_shapes=dims), path
    )
    return path


def rewrite(source: Path, target: Path, change) -> Path:
    """Copy the archive, passing each member's (name, bytes) through ``change`` (None drops it)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for name in src.namelist():
            result = change(name, src.read(name))
            if result is not None:
                dst.writestr(result[0], result[1])
    return target


def edit_program(source: Path, target: Path, edit) -> Path:
    def change(name, data):
        if name.endswith("models/model.json"):
            program = json.loads(data)
            edit(program)
            return name, json.dumps(program).encode()
        return name, data

    return rewrite(source, target, change)


class Marker:
    """Unpickling it creates a file: proof that something was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_good_archive_loads_and_computes(good):
    audit_program(good)
    module = load_program(good).eval()
    reference = torch.export.load(good).module()
    x = torch.randn(3, 3, 20, 28)
    assert torch.equal(module(x), reference(x))


def test_node_target_outside_aten_is_refused(good, tmp_path):
    def edit(program):
        node = next(
            n for n in program["graph_module"]["graph"]["nodes"] if n["target"].startswith("torch.ops")
        )
        node["target"] = "torch.os.system"

    with pytest.raises(WeightsError, match=r"node target 'torch\.os\.system' is not an ATen operator"):
        audit_program(edit_program(good, tmp_path / "target.pt2", edit))


def first_expression(program: dict) -> dict:
    stack = [program]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if isinstance(value.get("expr_str"), str):
                return value
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    raise AssertionError("the dynamic program has no symbolic expression")


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('true')",
        "Symbol('s0').__class__",
        "Integer(1) if True else exec('x')",
        "Symbol('s0; x')",
    ],
)
def test_shape_expression_outside_arithmetic_is_refused(good, tmp_path, expression):
    def edit(program):
        first_expression(program)["expr_str"] = expression

    with pytest.raises(WeightsError, match="shape expression"):
        audit_program(edit_program(good, tmp_path / "expr.pt2", edit))


def test_pickled_weights_are_refused(good, tmp_path):
    def change(name, data):
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            next(iter(config["config"].values()))["use_pickle"] = True
            return name, json.dumps(config).encode()
        return name, data

    with pytest.raises(WeightsError, match="stored as a pickle"):
        audit_program(rewrite(good, tmp_path / "pickled.pt2", change))


def test_opaque_constant_member_is_refused(good, tmp_path):
    def change(name, data):
        return name, data

    path = rewrite(good, tmp_path / "opaque.pt2", change)
    root = zipfile.ZipFile(good).namelist()[0].split("/")[0]
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(f"{root}/data/constants/opaque_obj_0", pickle.dumps(Marker(tmp_path / "m")))
    with pytest.raises(WeightsError, match=r"unexpected member .*opaque_obj_0"):
        audit_program(path)
    assert not (tmp_path / "m").exists()


def test_sample_inputs_that_need_unpickling_are_refused(good, tmp_path):
    marker = tmp_path / "unpickled"

    def change(name, data):
        if name.endswith("sample_inputs/model.pt"):
            import io

            buffer = io.BytesIO()
            torch.save(((Marker(marker),), {}), buffer)
            return name, buffer.getvalue()
        return name, data

    path = rewrite(good, tmp_path / "samples.pt2", change)
    with pytest.raises(WeightsError, match="sample inputs need unpickling"):
        load_program(path)
    assert not marker.exists()


def test_stored_guard_code_is_never_run(good, tmp_path):
    """torch's own ``module()`` execs the archive's guard code; the served module does not."""
    marker = tmp_path / "guard-ran"

    def edit(program):
        program["guards_code"] = [f"__import__('pathlib').Path({str(marker)!r}).touch() is None"]

    path = edit_program(good, tmp_path / "guards.pt2", edit)
    module = load_program(path)
    module(torch.randn(1, 3, 16, 16))
    assert not marker.exists()
    torch.export.load(path).module()(torch.randn(1, 3, 16, 16))  # plain torch.export.load + module()
    assert marker.exists(), (
        "the planted guard should run under torch's defaults (else this test proves nothing)"
    )


def test_not_a_zip(tmp_path):
    (tmp_path / "x.pt2").write_bytes(b"\x80\x04junk")
    with pytest.raises(WeightsError, match=r"not a torch\.export archive"):
        audit_program(tmp_path / "x.pt2")
