"""``torch.export`` programs (``.pt2``): audited first, then loaded without running code from the file.

``torch.export.load`` is not safe for an untrusted file, and neither is calling the program it returns:

- it unpickles: ``torch.load(weights_only=False)`` for weights and constants the archive marks
  ``use_pickle`` (tensor subclasses), ``pickle.loads`` for "opaque" constants, torchbind's pickler for
  custom objects, and a ``weights_only=False`` retry when the sample inputs fail to load safely;
- it evaluates the archive's symbolic shape expressions with ``sympy.sympify`` (which calls ``eval``);
- it resolves each node's target by walking ``torch.<anything>`` attributes named in the file;
- ``ExportedProgram.module()`` ``exec``s the guard code stored in the archive.

So before ``torch.export.load`` sees a file, ``audit_program`` checks it against allowlists: only the
members a plain CPU export writes; no pickled payload of any kind; sample inputs that load with
``weights_only=True`` (so the unsafe retry never runs); node targets that are ATen operators or a few
``operator`` functions; shape expressions made only of sympy's arithmetic names and symbol names.
The program is then taken with ``module(check_guards=False)``: the stored guard code is never run (the
runner's inputs follow the entry's input policy, which ``segserve models check`` exercises).

The audit follows torch 2.14's archive format; an archive written by another torch version may be
refused. Even so, prefer ONNX or a safetensors state dict for files from people you do not trust:
the audit narrows what a file can do, it does not make ``torch.export`` a format designed for them.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from service.models.registry import WeightsError

MODEL = "model"  # torch.export.save writes the program under this name
ALLOWED_MEMBERS = re.compile(
    r"^(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/model\.json|data/sample_inputs/model\.pt"
    r"|data/weights/model_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+"
    r"|extra/[A-Za-z0-9_.-]+)$"
)
OPERATOR_FUNCTIONS = {
    "getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pow",
    "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "not_",
}  # fmt: skip
ATEN_TARGET = re.compile(r"^torch\.ops\.aten\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+$")
# Names a shape expression may call: sympy's arithmetic and logic, and torch's sympy functions.
SYMPY_NAMES = {
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Eq", "Ne",
    "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan",
    "Equality", "Unequality", "And", "Or", "Not", "true", "false", "True", "False", "oo",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt",
    "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal",
    "ToFloat", "Identity", "positive", "integer", "nonnegative", "real", "finite", "precision",
}  # fmt: skip
QUOTED = re.compile(r"'([^']*)'")
SAFE_QUOTED = re.compile(r"^([a-z]+\d+|-?\d+(\.\d*)?(e[-+]?\d+)?)$")
SAFE_CHARS = re.compile(r"^[A-Za-z0-9_(),=\s.+\-*/]*$")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _refuse(path: Path, why: str) -> WeightsError:
    return WeightsError(f"{path}: torch.export archive refused (nothing was loaded): {why}")


def audit_program(path: Path) -> None:
    """Raise ``WeightsError`` unless the archive can be loaded without running code from it."""
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise WeightsError(f"{path}: weights file not found") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise WeightsError(f"{path}: not a torch.export archive (a .pt2 is a zip file): {e}") from None
    with archive:
        names = archive.namelist()
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or any("/" not in n for n in names):
            raise _refuse(path, "members must share one top folder, as torch.export.save writes them")
        root = roots.pop() + "/"
        for name in names:
            if not ALLOWED_MEMBERS.match(name[len(root) :]):
                raise _refuse(
                    path, f"unexpected member {name!r} (pickled object, compiled code or legacy format)"
                )
        _audit_payloads(path, archive, root)
        _audit_sample_inputs(path, archive, root)
        try:
            program = json.loads(archive.read(f"{root}models/{MODEL}.json"))
        except KeyError:
            raise _refuse(path, f"no program named {MODEL!r}") from None
        except ValueError as e:
            raise _refuse(path, f"the program is not valid JSON: {e}") from None
        _audit_program_json(path, program)


def _audit_payloads(path: Path, archive: zipfile.ZipFile, root: str) -> None:
    for kind in ("weights", "constants"):
        member = f"{root}data/{kind}/{MODEL}_{kind}_config.json"
        try:
            config = json.loads(archive.read(member)).get("config", {})
        except KeyError:
            raise _refuse(path, f"{member!r} is missing") from None
        for fqn, meta in config.items():
            if meta.get("use_pickle", True) or meta.get("tensor_meta") is None:
                raise _refuse(path, f"{kind} {fqn!r} is stored as a pickle")
            if not re.fullmatch(r"(weight|tensor)_\d+", str(meta.get("path_name", ""))):
                raise _refuse(path, f"{kind} {fqn!r} is not a plain tensor ({meta.get('path_name')!r})")


def _audit_sample_inputs(path: Path, archive: zipfile.ZipFile, root: str) -> None:
    member = f"{root}data/sample_inputs/{MODEL}.pt"
    try:
        data = archive.read(member)
    except KeyError:
        raise _refuse(path, f"{member!r} is missing") from None
    if not data:
        return
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception as e:  # anything weights_only refuses is something torch would then unpickle
        raise _refuse(path, f"the sample inputs need unpickling: {type(e).__name__}") from None


def _strings_under(value: object, key: str) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            if k == key and isinstance(v, str):
                yield v
            else:
                yield from _strings_under(v, key)
    elif isinstance(value, list):
        for v in value:
            yield from _strings_under(v, key)


def _audit_program_json(path: Path, program: dict) -> None:
    graph = program.get("graph_module", {}).get("graph", {})
    if graph.get("custom_obj_values"):
        raise _refuse(path, "the program holds custom (torchbind) objects")
    for node in graph.get("nodes", []):
        target = str(node.get("target", ""))
        if ATEN_TARGET.match(target):
            continue
        if target.startswith("_operator.") and target.removeprefix("_operator.") in OPERATOR_FUNCTIONS:
            continue
        raise _refuse(path, f"node target {target!r} is not an ATen operator")
    for name in program.get("range_constraints", {}):
        if not re.fullmatch(r"[a-z]+\d+", name):
            raise _refuse(path, f"symbol name {name!r}")
    for expr in _strings_under(program, "expr_str"):
        _audit_expression(path, expr)


def _audit_expression(path: Path, expr: str) -> None:
    """A shape expression may only construct sympy numbers, symbols and arithmetic (sympify evals it)."""
    for quoted in QUOTED.findall(expr):
        if not SAFE_QUOTED.match(quoted):
            raise _refuse(path, f"shape expression with string {quoted!r}")
    bare = QUOTED.sub("s", expr)
    if not SAFE_CHARS.match(bare) or re.search(r"[A-Za-z_]\w*\s*\.", bare):
        raise _refuse(path, f"shape expression {expr[:80]!r} has characters outside arithmetic")
    for name in IDENTIFIER.findall(re.sub(r"\d+(\.\d*)?(e[-+]?\d+)?", "0", bare)):
        if name not in SYMPY_NAMES and name != "s":
            raise _refuse(path, f"shape expression names {name!r}")


class ProgramModule(nn.Module):
    """An exported program behind the ``nn.Module`` face the runner uses.

    The program's train/eval mode was fixed when it was exported (export it from ``model.eval()``);
    its module refuses ``eval()``, so switching modes is a no-op here.
    """

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

    def train(self, mode: bool = True) -> ProgramModule:
        return self

    def forward(self, x: torch.Tensor) -> object:
        return self.program(x)


def load_program(path: Path) -> nn.Module:
    """The audited program as a module on the CPU (its stored guards are not run)."""
    path = Path(path)
    audit_program(path)
    try:
        program = torch.export.load(path)
    except Exception as e:  # torch's own checks (version, schema) after our audit
        raise WeightsError(f"{path}: torch.export.load failed: {type(e).__name__}: {e}") from None
    return ProgramModule(program.module(check_guards=False))
