"""The try-it page's routes and files without Ray: redirects, media types, headers, relative URLs only,
and the files inside the wheel the Docker image installs. The page in a real browser against the real
service: tests/integration/test_ui.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.http import build_http_app
from service.api.ui import MEDIA_TYPES

ROOT = Path(__file__).resolve().parents[2]
UI = ROOT / "service" / "api" / "ui"


@pytest.fixture(scope="module")
def client():
    # The page's routes never reach the core, so the app needs none.
    with TestClient(build_http_app()) as c:
        yield c


@pytest.mark.parametrize("path", ["/", "/ui"])
def test_the_entry_points_redirect_relatively_to_the_page(client, path):
    r = client.get(path, follow_redirects=False)
    assert r.status_code == 307
    assert r.headers["location"] == "ui/"  # relative: a route prefix in front of us is kept
    page = client.get(path)
    assert page.url.path == "/ui/" and page.status_code == 200


@pytest.mark.parametrize(
    ("path", "name"), [("/ui/", "index.html"), ("/ui/app.js", "app.js"), ("/ui/style.css", "style.css")]
)
def test_the_files_are_served_as_they_are_with_their_types_and_a_strict_policy(client, path, name):
    r = client.get(path)
    assert r.status_code == 200
    assert r.content == (UI / name).read_bytes()
    assert r.headers["content-type"] == MEDIA_TYPES[name]
    policy = r.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", ["/ui/secret.py", "/ui/__init__.py", "/ui/../http.py", "/ui/index"])
def test_nothing_else_in_the_folder_is_served(client, path):
    assert client.get(path).status_code == 404


def test_the_page_uses_relative_urls_only():
    html = (UI / "index.html").read_text()
    script = (UI / "app.js").read_text()
    linked = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert sorted(linked) == ["app.js", "style.css"]
    # No absolute path or other origin: fetch URLs are built from the relative API base.
    assert re.findall(r'const API = "([^"]*)"', script) == ["../v1/models"]
    for text in (html, script):
        assert not re.search(r'["\'`](?:/|https?:|//)', text), "an absolute URL in the page"
    # No inline script or style: the content security policy would block them.
    assert "<script>" not in html and "style=" not in html and "<style" not in html


def test_the_wheel_carries_the_page(tmp_path):
    """The Docker image installs the wheel built from pyproject.toml and service/ (deploy/docker)."""
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    shutil.copytree(ROOT / "service", source / "service", ignore=shutil.ignore_patterns("__pycache__"))
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*pip_wheel, "-w", tmp_path, source], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("segserve-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in MEDIA_TYPES:
        assert f"service/api/ui/{name}" in names
