"""API keys (loading, constant-time check), deadline headers, auth-related HTTP details, and model paths
that must not leave the repository root (symlinks included). No Ray."""

from __future__ import annotations

import contextlib
import hmac
from pathlib import Path

import pytest
import yaml

from service.api.core import SegmentationCore, load_api_keys, parse_timeout_ms
from service.api.errors import http_headers
from service.config import ConfigError, load_repository, parse_app_settings
from service.errors import InvalidArgument, Overloaded, Unauthenticated, Unavailable

ROOT = Path(__file__).resolve().parents[2]


def core_with(
    tmp_path: Path, monkeypatch, env: str | None = None, lines: str | None = None
) -> SegmentationCore:
    args = {}
    if env is not None:
        monkeypatch.setenv("TEST_SEGSERVE_KEYS", env)
        args["api_keys_env"] = "TEST_SEGSERVE_KEYS"
    if lines is not None:
        (tmp_path / "keys").write_text(lines)
        args["api_keys_file"] = str(tmp_path / "keys")
    repository = load_repository(ROOT / "models" / "repository.yaml")
    return SegmentationCore(repository, parse_app_settings(args), names=[], models=None)


# --- loading keys ---------------------------------------------------------------------------------------


def test_keys_from_env_are_comma_separated_and_trimmed(tmp_path, monkeypatch):
    core = core_with(tmp_path, monkeypatch, env=" alpha , beta,,gamma ,")
    assert core.api_keys == (b"alpha", b"beta", b"gamma")


def test_keys_from_a_file_one_per_line_blank_lines_ignored(tmp_path, monkeypatch):
    core = core_with(tmp_path, monkeypatch, lines="alpha\n\n  beta  \r\n")
    assert core.api_keys == (b"alpha", b"beta")


def test_env_and_file_together(tmp_path, monkeypatch):
    core = core_with(tmp_path, monkeypatch, env="from-env", lines="from-file\n")
    assert set(core.api_keys) == {b"from-env", b"from-file"}


def test_an_unset_or_empty_env_var_means_no_keys(monkeypatch):
    monkeypatch.delenv("TEST_SEGSERVE_NOT_SET", raising=False)
    assert load_api_keys(parse_app_settings({"api_keys_env": "TEST_SEGSERVE_NOT_SET"})) == ()
    monkeypatch.setenv("TEST_SEGSERVE_EMPTY", " , ")
    assert load_api_keys(parse_app_settings({"api_keys_env": "TEST_SEGSERVE_EMPTY"})) == ()


def test_a_missing_keys_file_fails_at_start_up(tmp_path):
    with pytest.raises(OSError):
        load_api_keys(parse_app_settings({"api_keys_file": str(tmp_path / "absent")}))


# --- checking keys --------------------------------------------------------------------------------------


def test_no_keys_configured_means_open(tmp_path, monkeypatch):
    core = core_with(tmp_path, monkeypatch)
    core.authenticate(None)
    core.authenticate("anything")


@pytest.mark.parametrize("key", ["alpha", "beta-is-longer-than-alpha"])
def test_each_configured_key_is_accepted(tmp_path, monkeypatch, key):
    core_with(tmp_path, monkeypatch, env="alpha,beta-is-longer-than-alpha").authenticate(key)


@pytest.mark.parametrize("key", [None, "", "alph", "alphaa", "ALPHA", " alpha", "beta", "alpha,beta"])
def test_anything_else_is_refused(tmp_path, monkeypatch, key):
    core = core_with(tmp_path, monkeypatch, env="alpha,beta-is-longer-than-alpha")
    with pytest.raises(Unauthenticated) as e:
        core.authenticate(key)
    assert e.value.http_status == 401 and "alpha" not in e.value.message


def test_every_key_is_compared_in_constant_time_on_fixed_length_digests(tmp_path, monkeypatch):
    """hmac.compare_digest on equal-length digests for every configured key: no early exit on a match,
    and the given key's length does not change what is compared."""
    core = core_with(tmp_path, monkeypatch, env="k1,k2-longer,k3-longest-of-all")
    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr("service.api.core.hmac.compare_digest", spy)
    for key in ["k1", "x" * 1000, "k3-longest-of-all"]:
        compared.clear()
        with contextlib.suppress(Unauthenticated):
            core.authenticate(key)
        assert compared == [(32, 32)] * 3, key


def test_unauthenticated_is_a_401_naming_the_bearer_scheme():
    error = Unauthenticated("missing or invalid API key")
    assert error.http_status == 401 and error.code == "unauthenticated"
    assert http_headers(error) == {"WWW-Authenticate": "Bearer"}
    assert (
        http_headers(Overloaded("x"))["Retry-After"] == http_headers(Unavailable("x"))["Retry-After"] == "1"
    )


# --- which routes need a key ------------------------------------------------------------------------------


class NoModels:
    """The core's model backend, for routes that never reach a model."""

    async def ready(self) -> list:
        return []


@pytest.mark.parametrize(
    ("method", "path", "open_"),
    [
        ("GET", "/healthz", True),
        ("GET", "/readyz", True),
        ("GET", "/", True),  # the try-it page: static, its API calls carry the key typed into it
        ("GET", "/ui/app.js", True),
        ("GET", "/v1/models", False),
        ("GET", "/v1/models/unet-shapes", False),
        ("POST", "/v1/models/unet-shapes/segment", False),
        ("GET", "/docs", False),
        ("GET", "/openapi.json", False),
    ],
)
def test_only_the_probes_are_open_when_keys_are_configured(tmp_path, monkeypatch, method, path, open_):
    from fastapi.testclient import TestClient

    from service.api.http import SegmentFirst, build_http_app

    core = core_with(tmp_path, monkeypatch, env="alpha")
    core.models = NoModels()
    app = build_http_app()
    app.state.core = core
    # As the ingress serves it: the segment route first (SegmentFirst), the rest through FastAPI.
    with TestClient(SegmentFirst(app)) as client:
        anonymous = client.request(method, path)
        keyed = client.request(method, path, headers={"authorization": "Bearer alpha"})
    if open_:
        assert anonymous.status_code == 200
    else:
        assert anonymous.status_code == 401, anonymous.text
        assert anonymous.json()["error"]["code"] == "unauthenticated"
        assert anonymous.headers["www-authenticate"] == "Bearer"
        assert keyed.status_code != 401


# --- deadline headers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [(None, None), ("", None), ("250", 0.25), ("1.5", 0.0015)])
def test_timeout_header_values(value, seconds):
    assert parse_timeout_ms(value, "x-request-timeout-ms") == seconds


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan", "inf", "1e400"])
def test_bad_timeout_header_values_are_a_400(value):
    with pytest.raises(InvalidArgument, match="x-request-timeout-ms") as e:
        parse_timeout_ms(value, "x-request-timeout-ms")
    assert e.value.http_status == 400


def test_the_deadline_is_the_shorter_of_the_callers_and_the_configured_one(tmp_path, monkeypatch):
    import time

    core = core_with(tmp_path, monkeypatch)
    limit = core.settings.limits.request_timeout_s
    now = time.time()
    assert core.deadline(0.5) - now == pytest.approx(0.5, abs=0.2)
    assert core.deadline(limit * 10) - now == pytest.approx(limit, abs=0.2)
    assert core.deadline(None) - now == pytest.approx(limit, abs=0.2)


# --- model paths stay inside the repository root ---------------------------------------------------------


def repository_at(root: Path, weights: str) -> Path:
    """A one-model repository in ``root`` whose model reads ``weights`` (relative to ``root``)."""
    data = yaml.safe_load((ROOT / "models" / "repository.yaml").read_text())
    entry = next(m for m in data["models"] if m["name"] == "unet-shapes")
    entry["weights"] = weights
    root.mkdir(parents=True, exist_ok=True)
    path = root / "repository.yaml"
    path.write_text(yaml.safe_dump({"models": [entry]}))
    return path


@pytest.fixture
def outside(tmp_path) -> Path:
    """A safetensors file outside the repository root."""
    target = tmp_path / "outside" / "stolen.safetensors"
    target.parent.mkdir()
    target.write_bytes(b"not really weights")
    return target


def test_a_symlinked_file_pointing_outside_the_root_is_refused(tmp_path, outside):
    root = tmp_path / "repo"
    (root / "m").mkdir(parents=True)
    (root / "m" / "model.safetensors").symlink_to(outside)
    with pytest.raises(ConfigError, match="escapes"):
        load_repository(repository_at(root, "m/model.safetensors"))


def test_a_symlinked_folder_pointing_outside_the_root_is_refused(tmp_path, outside):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "m").symlink_to(outside.parent, target_is_directory=True)
    with pytest.raises(ConfigError, match="escapes"):
        load_repository(repository_at(root, "m/stolen.safetensors"))


@pytest.mark.parametrize("weights", ["/etc/model.safetensors", "m/../../outside/stolen.safetensors"])
def test_absolute_and_dotdot_paths_are_refused(tmp_path, outside, weights):
    with pytest.raises(ConfigError, match="escapes"):
        load_repository(repository_at(tmp_path / "repo", weights))


def test_a_symlink_that_stays_inside_the_root_is_fine(tmp_path):
    root = tmp_path / "repo"
    (root / "store").mkdir(parents=True)
    (root / "store" / "w.safetensors").write_bytes(b"x")
    (root / "m").mkdir()
    (root / "m" / "model.safetensors").symlink_to(root / "store" / "w.safetensors")
    repo = load_repository(repository_at(root, "m/model.safetensors"))
    assert repo.weights_path(repo.models[0]) == (root / "store" / "w.safetensors").resolve()


def test_a_symlinked_repository_root_is_resolved_before_the_check(tmp_path):
    """The root itself may be a symlink (a mounted volume): paths inside its target are fine."""
    real = tmp_path / "real"
    (real / "m").mkdir(parents=True)
    (real / "m" / "model.safetensors").write_bytes(b"x")
    repository_at(real, "m/model.safetensors")
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    repo = load_repository(tmp_path / "link" / "repository.yaml")
    assert repo.weights_path(repo.models[0]) == (real / "m" / "model.safetensors").resolve()


@pytest.mark.parametrize("root_path", ["", "/prefix"])
def test_segment_first_takes_the_segment_route_and_leaves_the_rest_to_fastapi(
    tmp_path, monkeypatch, root_path
):
    """Under an application's route prefix too: the segment route answers (here: unknown model, 404 JSON
    from segment_endpoint, counted as a segment request), any other path goes to FastAPI's routes."""
    from fastapi.testclient import TestClient

    from service import metrics
    from service.api.http import SegmentFirst, build_http_app

    sink = metrics.MemorySink()
    metrics.set_sink(sink)
    try:
        core = core_with(tmp_path, monkeypatch)
        core.models = NoModels()
        app = build_http_app()
        app.state.core = core
        with TestClient(SegmentFirst(app), root_path=root_path) as client:
            missing = client.post(f"{root_path}/v1/models/nope/segment", content=b"x")
            health = client.get(f"{root_path}/healthz")
            wrong_method = client.get(f"{root_path}/v1/models/nope/segment")
    finally:
        metrics.set_sink(None)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert sum(v for k, v in sink.counters.items() if k[0] == "seg_requests") == 1
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert wrong_method.status_code == 405  # FastAPI's answer: the fast path takes POSTs only
