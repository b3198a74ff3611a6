"""The model repository and application args are validated strictly."""

from pathlib import Path

import pytest
import yaml

from service.config import ConfigError, load_repository, parse_app_settings

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "repository.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def shipped() -> dict:
    return yaml.safe_load((ROOT / "models" / "repository.yaml").read_text())


def test_the_shipped_repository_loads():
    repo = load_repository(ROOT / "models" / "repository.yaml")
    assert "unet-shapes" in repo.names()
    spec = repo.get("unet-shapes")
    assert spec.num_classes == 4 and spec.classes[0].name == "background"
    assert repo.weights_path(spec).is_file()


def test_a_typo_is_rejected_naming_file_and_key(tmp_path):
    data = shipped()
    data["models"][0]["batching"]["max_batch_sise"] = 4
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_repository(path)
    message = str(e.value)
    assert str(path) in message and "max_batch_sise" in message and "unknown key" in message


def test_a_typo_in_deployment_resources_is_rejected(tmp_path):
    data = shipped()
    data["models"][0]["deployment"]["num_gpu"] = 1  # Ray itself would silently ignore this
    with pytest.raises(ConfigError, match="num_gpu"):
        load_repository(write(tmp_path, data))


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda m: m.update(weights="unet-shapes/model.pt"), "safetensors"),
        (lambda m: m.update(weights="../../etc/model.safetensors"), "escapes"),
        (lambda m: m["classes"].pop(1), "without gaps"),
        (lambda m: m.update(task="detection"), "task"),
        (lambda m: m["classes"][0].update(color=[0, 0, 300]), "0..255"),
    ],
)
def test_invalid_entries_are_explained(tmp_path, change, fragment):
    data = shipped()
    change(data["models"][0])
    with pytest.raises(ConfigError, match=fragment):
        load_repository(write(tmp_path, data))


def test_duplicate_names_are_rejected(tmp_path):
    data = shipped()
    data["models"].append(dict(data["models"][0]))
    with pytest.raises(ConfigError, match="duplicate"):
        load_repository(write(tmp_path, data))


def test_app_args_are_strict():
    assert parse_app_settings({"limits": {"max_body_bytes": 10}}).limits.max_body_bytes == 10
    with pytest.raises(ConfigError, match="max_body_byte"):
        parse_app_settings({"limits": {"max_body_byte": 10}})


# --- topology -------------------------------------------------------------------------------------


def _spec_with(repository, **deployment):
    spec = repository.get("unet-shapes")
    return spec.model_copy(update={"deployment": spec.deployment.model_copy(update=deployment)})


@pytest.mark.parametrize(
    ("topology", "deployments", "expected"),
    [
        ("auto", [{}], "fused"),  # the shipped models: CPU
        ("auto", [{"device": "cpu", "num_gpus": 0.5}], "fused"),  # pinned to CPU whatever it holds
        ("auto", [{}, {"num_gpus": 0.25}], "split"),  # one model on a GPU is enough
        ("auto", [{"device": "cuda"}], "split"),
        ("split", [{}], "split"),
        ("fused", [{"num_gpus": 1}], "fused"),  # said explicitly: obeyed
    ],
)
def test_topology_auto_fuses_the_codec_only_when_every_model_runs_on_cpu(topology, deployments, expected):
    from service.app import resolve_topology

    repository = load_repository(ROOT / "models" / "repository.yaml")
    specs = [_spec_with(repository, **d) for d in deployments]
    assert resolve_topology(parse_app_settings({"topology": topology}), specs) == expected


def test_an_unknown_topology_is_refused():
    with pytest.raises(ConfigError, match="topology"):
        parse_app_settings({"topology": "merged"})


# --- instance models ------------------------------------------------------------------------------


def instance_repository(tmp_path: Path, **changes) -> Path:
    from tests.instance_entry import instance_entry

    entry = instance_entry(**changes)
    for key, value in changes.items():
        if value is None:
            entry.pop(key)
    return write(tmp_path, {"models": [entry]})


def test_an_instance_entry_loads_with_its_thresholds(tmp_path):
    spec = load_repository(instance_repository(tmp_path)).models[0]
    assert spec.task == "instance" and spec.instance.max_detections == 5
    assert spec.input.mode == "shortest_edge" and spec.input.max_size == 128


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"instance": None}, "needs an 'instance' section"),
        ({"instance": {"score_thresold": 0.3}}, "score_thresold"),
        ({"instance": {"mask_threshold": 1.0}}, "mask_threshold"),
        ({"instance": {"max_detections": 70000}}, "max_detections"),
        ({"architecture": "unet"}, "task instance goes with"),
        ({"task": "semantic"}, "task instance goes with"),
        ({"classes": [{"id": 0, "name": "background", "color": [0, 0, 0]}]}, "at least one object class"),
        ({"input": {"mode": "letterbox"}}, "max_size is for mode shortest_edge"),
    ],
)
def test_invalid_instance_entries_are_explained(tmp_path, changes, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_repository(instance_repository(tmp_path, **changes))


def test_an_instance_section_on_a_semantic_model_is_refused(tmp_path):
    data = shipped()
    data["models"][0]["instance"] = {"score_threshold": 0.5}
    with pytest.raises(ConfigError, match="only instance models"):
        load_repository(write(tmp_path, data))
