"""The image recipe, without a Docker engine: what it copies exists and is in the build context, the
entry points it names exist, and it agrees with the manifests and pyproject.toml."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

from .dockerfile import arg_defaults, copy_problems, env_values, is_ignored, parse, parse_dockerignore
from .manifests import (
    DOCKERFILE,
    DOCKERIGNORE,
    GRPC_SIZE_ENV,
    PROJECT_ROOT,
    SERVE_CONFIG,
    load_yaml,
    of_kind,
    pod_templates,
    ray_container,
    rendered,
    targets,
)

INSTRUCTIONS = parse(DOCKERFILE.read_text())


def test_copied_paths_exist_and_are_in_the_build_context() -> None:
    assert copy_problems(DOCKERFILE, PROJECT_ROOT, DOCKERIGNORE) == []


def test_dockerignore_keeps_local_state_out() -> None:
    rules = parse_dockerignore(DOCKERIGNORE.read_text())
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "checkpoints/x.pt",
        "runs/a",
        "tests/unit/x.py",
        "service/__pycache__/app.cpython-311.pyc",
        "segserve.egg-info/PKG-INFO",
    ):
        assert is_ignored(path, rules), path
    for path in (
        "pyproject.toml",
        "service/config.py",
        "service/generated/segmentation/v1/x_pb2.py",
        "models/repository.yaml",
        "models/unet-shapes/model.safetensors",
        "deploy/serve_config.yaml",
    ):
        assert not is_ignored(path, rules), path


def test_the_build_installs_the_package_and_copies_the_models() -> None:
    copies = [i.args for i in INSTRUCTIONS if i.keyword == "COPY"]
    assert any(re.search(r"\bservice/", a) for a in copies), "the package source (service/) is not copied"
    assert any(re.search(r"\bmodels/ models/", a) for a in copies), "models/ is not copied to /app/models"
    workdirs = [i.args for i in INSTRUCTIONS if i.keyword == "WORKDIR"]
    assert workdirs[-1] == "/app"
    runs = " ".join(i.args for i in INSTRUCTIONS if i.keyword == "RUN")
    assert "pip install" in runs and "-e " not in runs, "install the package itself (no editable install)"


def test_base_image_matches_pinned_ray_and_python() -> None:
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text()
    ray_pin = re.search(r'"ray\[serve\]==([^"]+)"', pyproject)
    assert ray_pin
    assert arg_defaults(INSTRUCTIONS)["RAY_VERSION"] == ray_pin.group(1)
    assert ">=3.11,<3.12" in pyproject
    froms = [i.args.split()[0] for i in INSTRUCTIONS if i.keyword == "FROM"]
    assert froms and all(f == "rayproject/ray:${RAY_VERSION}-py311${RAY_IMAGE_SUFFIX}" for f in froms)


def test_image_env_matches_the_rayservice_and_make_serve() -> None:
    from service.local import RAY_SERVE_ENV

    image = env_values(INSTRUCTIONS)
    assert {k: image.get(k) for k in RAY_SERVE_ENV} == RAY_SERVE_ENV
    for name, folder in targets().items():
        (rayservice,) = of_kind(rendered(folder), "RayService")
        for role, template in pod_templates(rayservice).items():
            env = {e["name"]: e.get("value") for e in ray_container(template).get("env", [])}
            for key in (GRPC_SIZE_ENV, *RAY_SERVE_ENV):
                assert env.get(key) == image[key], f"{name} {role} {key}"


# --- entry points ----------------------------------------------------------------------------------


def _module_file(module: str) -> Path | None:
    """Where ``module`` lives, without importing it (and Ray with it): the source tree for
    ``service.*``, the virtualenv for third-party modules."""
    if module.split(".")[0] == "service":
        path = PROJECT_ROOT.joinpath(*module.split("."))
        for candidate in (path.with_suffix(".py"), path / "__init__.py"):
            if candidate.exists():
                return candidate
        return None
    spec = importlib.util.find_spec(module)
    return Path(spec.origin) if spec and spec.origin else None


def _defines(path: Path, name: str) -> bool:
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name:
            return True
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return True
    return False


def _entry_points() -> list[tuple[str, str]]:
    """(module, attribute) for every import path the Serve config names."""
    config = load_yaml(SERVE_CONFIG)
    points = [tuple(app["import_path"].split(":")) for app in config["applications"]]
    for function in (config.get("grpc_options") or {}).get("grpc_servicer_functions", []):
        module, _, name = function.rpartition(".")
        points.append((module, name))
    return points


@pytest.mark.parametrize(("module", "name"), _entry_points(), ids=lambda v: str(v))
def test_serve_config_entry_points_exist(module: str, name: str) -> None:
    path = _module_file(module)
    assert path is not None, f"{module} not found (for service.*: in {PROJECT_ROOT}/service)"
    assert _defines(path, name), f"{module} does not define {name}"


def test_generated_grpc_code_is_packaged() -> None:
    # setuptools' package discovery (pyproject: include service*) needs an __init__.py in every
    # folder, or the wheel the image installs lacks the modules the gRPC proxy imports.
    for module, _ in _entry_points():
        if module.startswith("service."):
            for depth in range(1, module.count(".") + 1):
                package = PROJECT_ROOT.joinpath(*module.split(".")[:depth])
                assert (package / "__init__.py").exists(), f"{package} has no __init__.py"


def test_the_image_build_imports_what_the_proxy_imports() -> None:
    runs = " ".join(i.args for i in INSTRUCTIONS if i.keyword == "RUN")
    for module, _ in _entry_points():
        assert f"import {module}" in runs or f", {module}" in runs, f"the build does not import {module}"


def test_default_command_exists() -> None:
    (cmd,) = [i for i in INSTRUCTIONS if i.keyword == "CMD"]
    program = cmd.args.strip('[]" ').split('"')[0]
    copies = {i.args.split()[-1]: i.args.split()[-2] for i in INSTRUCTIONS if i.keyword == "COPY"}
    source = copies.get(f"/usr/local/bin/{program}")
    assert source, f"CMD {program} is not copied into /usr/local/bin"
    script = PROJECT_ROOT / source
    assert os.access(script, os.X_OK), f"{script} is not executable"
    text = script.read_text()
    assert "--metrics-export-port=8080" in text and "/app/serve_config.yaml" in text
    venv_bin = Path(sys.executable).parent
    for tool in ("ray", "serve"):
        assert (venv_bin / tool).exists(), f"{tool} CLI missing from the Ray install"


# --- planted mistakes ------------------------------------------------------------------------------


def test_planted_copy_of_a_missing_path_is_caught(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        DOCKERFILE.read_text() + "\nCOPY --chown=ray:users weights/ \\\n    /app/weights/\n"
    )
    problems = copy_problems(dockerfile, PROJECT_ROOT, DOCKERIGNORE)
    assert any("'weights/'" in p and "does not exist" in p for p in problems)


def test_planted_dockerignore_excluding_a_copied_path_is_caught(tmp_path: Path) -> None:
    ignore = tmp_path / ".dockerignore"
    ignore.write_text(DOCKERIGNORE.read_text() + "\nmodels\n")
    problems = copy_problems(DOCKERFILE, PROJECT_ROOT, ignore)
    assert any("'models'" in p and "excluded" in p for p in problems)


def test_dockerfile_parser_joins_continuations_and_skips_comments() -> None:
    text = '# syntax=docker/dockerfile:1\nFROM a AS b\nRUN one \\\n  # note\n  two\nCOPY ["x y", "/z"]\n'
    instructions = parse(text)
    assert [(i.keyword, i.args, i.line) for i in instructions] == [
        ("FROM", "a AS b", 2),
        ("RUN", "one two", 3),
        ("COPY", '["x y", "/z"]', 6),
    ]
