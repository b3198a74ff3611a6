"""Fixtures shared by the deployment checks (all offline; nothing here starts Ray or a cluster)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from .manifests import PROJECT_ROOT, RAYSERVICE_SCHEMA, of_kind, rendered, targets

TARGETS = targets()
HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Importing ray.serve emits pydantic deprecation warnings from Ray's own models; they say
    # nothing about these checks, so they are silenced here (and only here).
    for item in items:
        if Path(str(item.fspath)).parent == HERE:
            item.add_marker(pytest.mark.filterwarnings("ignore::DeprecationWarning"))


@pytest.fixture(params=sorted(TARGETS))
def target(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def resources(target: str) -> list[dict[str, Any]]:
    """The target's rendered resources; a fresh copy, so a test may plant mistakes in it."""
    return copy.deepcopy(list(rendered(TARGETS[target])))


@pytest.fixture
def rayservice(resources: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = of_kind(resources, "RayService")
    return found


@pytest.fixture(scope="session")
def rayservice_schema() -> Path:
    if not RAYSERVICE_SCHEMA.exists():
        pytest.skip(
            f"KubeRay RayService JSON Schema not found at {RAYSERVICE_SCHEMA} (expected next to the "
            "project root, in ../shared/schemas/); RayService CRD validation skipped"
        )
    return RAYSERVICE_SCHEMA


@pytest.fixture(scope="session")
def repository() -> Any:
    from service.config import load_repository

    return load_repository(PROJECT_ROOT / "models" / "repository.yaml")
