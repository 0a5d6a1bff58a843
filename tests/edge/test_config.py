"""The daemon's settings: precedence, refusals that name the key, and a description everywhere."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from edge.config import BackendConfig, ConfigError, EdgeConfig, load_config, nested


def all_fields(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        yield prefix + name, field
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from all_fields(ann, prefix + name + ".")


def test_every_setting_has_a_description():
    fields = list(all_fields(EdgeConfig))
    assert len(fields) > 40
    missing = [name for name, f in fields if not (f.description or "").strip()]
    assert not missing, f"settings without a description: {missing}"


def test_defaults_run_with_nothing_configured(monkeypatch):
    import socket

    from models import DEFAULT_MODEL

    cfg = load_config()
    assert cfg.model.path == DEFAULT_MODEL
    assert cfg.source.uri.endswith("edge/demo/crackforest.mp4")
    assert cfg.backend.name == "auto"
    assert cfg.publish.endpoint == "tcp://127.0.0.1:5555"
    assert cfg.vehicle_id == socket.gethostname()


def test_flags_beat_env_beat_toml(tmp_path: Path, monkeypatch):
    toml = tmp_path / "edge.toml"
    toml.write_text('vehicle_id = "from-toml"\n[source]\nuri = "toml.mp4"\nloop = false\npace = true\n'
                    '[publish]\nendpoint = "tcp://127.0.0.1:6000"\n')
    monkeypatch.setenv("CRACK_EDGE_SOURCE__URI", "env.mp4")
    monkeypatch.setenv("CRACK_EDGE_SOURCE__LOOP", "true")
    monkeypatch.setenv("CRACK_EDGE_VEHICLE_ID", "from-env")
    cfg = load_config(toml, nested({"source.uri": "flag.mp4", "log_level": None}))
    assert cfg.source.uri == "flag.mp4"          # flag over env over TOML
    assert cfg.source.loop is True                # env over TOML
    assert cfg.source.pace is True                # TOML kept where nothing overrides it
    assert cfg.vehicle_id == "from-env"
    assert cfg.publish.endpoint == "tcp://127.0.0.1:6000"
    assert isinstance(cfg, EdgeConfig)


@pytest.mark.parametrize("data, named", [
    ({"sourc": {}}, "sourc: unknown key"),
    ({"source": {"uri": "x", "loops": True}}, "source.loops: unknown key"),
    ({"source": {"reconnect_min_s": 5, "reconnect_max_s": 1}}, "reconnect_max_s"),
    ({"model": {"inference_size": "30x30"}}, "use 32x32"),
    ({"model": {"inference_size": "big"}}, "model.inference_size"),
    ({"model": {"threshold": 1.5}}, "model.threshold"),
    ({"publish": {"endpoint": "udp://x"}}, "publish.endpoint"),
    ({"publish": {"linger_ms": -1}}, "publish.linger_ms"),
    ({"backend": {"precision": "fp8"}}, "backend.precision"),
    ({"log_level": "LOUD"}, "log_level"),
])
def test_bad_values_name_their_key(data, named):
    with pytest.raises(ConfigError) as e:
        load_config(None, data)
    assert named in str(e.value)


def test_toml_errors_name_the_file(tmp_path: Path):
    missing = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="absent.toml: config file not found"):
        load_config(missing)
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("[record]\nenable = true\n")
    with pytest.raises(ConfigError, match=r"typo.toml: .*record.enable: unknown key"):
        load_config(typo)


def test_unknown_environment_variable_is_refused(monkeypatch):
    monkeypatch.setenv("CRACK_EDGE_PUBLSH__ENDPOINT", "tcp://127.0.0.1:1")
    with pytest.raises(ConfigError, match="CRACK_EDGE_PUBLSH__ENDPOINT"):
        load_config()


@pytest.mark.parametrize("given, expected", [
    ("64x96", (64, 96)), ("448X448", (448, 448)), ([32, 32], (32, 32)), ("native", "native"), (None, None),
])
def test_inference_size_forms(given, expected):
    assert load_config(None, {"model": {"inference_size": given}}).model.inference_size == expected


def test_backend_options_reach_the_runtime(tmp_path, monkeypatch):
    b = BackendConfig(name="onnxruntime", threads=2, precision="int8", cache_dir=tmp_path,
                      options={"providers": ["CPUExecutionProvider"]})
    assert b.runtime_options() == {"providers": ["CPUExecutionProvider"], "threads": 2, "precision": "int8",
                                   "cache_dir": str(tmp_path)}
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/crack-edge")
    assert BackendConfig().runtime_options() == {"cache_dir": "/var/cache/crack-edge"}


def test_record_directory_follows_the_state_directory(monkeypatch):
    cfg = load_config(None, {"record": {"enabled": True, "directory": "rec"}})
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/crack-edge")
    assert cfg.record.resolved_directory() == Path("/var/lib/crack-edge/rec")


EXAMPLE = Path(__file__).resolve().parents[2] / "systemd" / "crack-edge.toml"


def test_example_config_in_systemd_folder_is_valid():
    cfg = load_config(EXAMPLE)
    assert cfg.source.mode == "latest" and cfg.record.enabled
    assert not cfg.ground.enabled   # the [ground] example ships commented out: pixels only by default


def test_example_ground_section_loads_when_uncommented(tmp_path):
    # Uncomment the example's TOML lines (table, keys, array rows), not its prose, and load it for real:
    # a homography that Ground.build refuses, or a typo'd key, fails here (exit 78 on a vehicle).
    toml = re.compile(r"^# (\[ground\]|\w+ = |  \[|\])")
    text = EXAMPLE.read_text()
    uncommented = "".join(line[2:] if toml.match(line) else line for line in text.splitlines(keepends=True))
    assert uncommented.count("\n[ground]\n") == 1 and uncommented != text
    path = tmp_path / "crack-edge.toml"
    path.write_text(uncommented)
    cfg = load_config(path)
    assert cfg.ground.enabled and cfg.ground.image_size == tuple(cfg.source.camera_size)
    assert cfg.ground.severity_mm == (10.0, 75.0) and cfg.source.mode == "latest"


def test_inference_size_follows_the_card_unless_configured():
    from edge.loader import inference_size
    from models.card import ModelCard

    resize, native = ModelCard(name="a", input_size=(448, 448)), ModelCard(name="b", inference="native")
    assert inference_size(EdgeConfig(), resize) == (448, 448)
    assert inference_size(EdgeConfig(), native) == "native"
    pinned = EdgeConfig.model_validate({"model": {"inference_size": [320, 480]}})
    assert inference_size(pinned, native) == (320, 480)


@pytest.mark.parametrize("backend, options, named", [
    ("onnxruntime", 'provider = ["CPUExecutionProvider"]', "provider: unknown key for backend onnxruntime"),
    ("openvino", 'devise = "CPU"', "devise: unknown key for backend openvino"),
    ("tensorrt", "workspace = 512", "workspace: unknown key for backend tensorrt"),
    ("tensorrt", "profile = { mx = [64, 64] }", "profile.mx: unknown key"),
    ("tensorrt", "device = -1", "device: Input should be greater than or equal to 0"),
    ("auto", 'providers = ["CPUExecutionProvider"]', "set backend.name"),
])
def test_a_typo_in_backend_options_is_refused_naming_the_key(tmp_path, backend, options, named):
    toml = tmp_path / "edge.toml"
    toml.write_text(f'[backend]\nname = "{backend}"\n[backend.options]\n{options}\n')
    with pytest.raises(ConfigError) as e:
        load_config(toml)
    assert f"{toml}: backend.options: " in str(e.value) and named in str(e.value), str(e.value)


def test_backend_options_from_toml_and_environment_reach_the_runtime(tmp_path, monkeypatch):
    toml = tmp_path / "edge.toml"
    toml.write_text('[backend]\nname = "tensorrt"\n[backend.options]\nprofile = { max = [640, 640] }\n')
    monkeypatch.setenv("CRACK_EDGE_BACKEND__OPTIONS__WORKSPACE_MB", "256")
    opts = load_config(toml).backend.runtime_options()
    assert opts["workspace_mb"] == 256 and opts["profile"] == {"max": (640, 640)}
    from edge.backends.tensorrt import profile_from_options

    assert profile_from_options(opts, (448, 448)).max_hw == (640, 640)


def test_every_problem_is_reported_at_once_with_its_origin(tmp_path, monkeypatch):
    toml = tmp_path / "edge.toml"
    toml.write_text('[record]\nenable = true\n[publish]\nlinger_ms = -1\n')
    monkeypatch.setenv("CRACK_EDGE_SOURCE__LOOP", "sometimes")
    monkeypatch.setenv("CRACK_EDGE_SORCE__URI", "x.mp4")
    with pytest.raises(ConfigError) as e:
        load_config(toml, {"model": {"threshold": 2.0}})
    text = str(e.value)
    assert text.startswith("5 invalid settings:"), text
    for line in ("env CRACK_EDGE_SORCE__URI: unknown setting", f"{toml}: record.enable: unknown key",
                 f"{toml}: publish.linger_ms: ", "env CRACK_EDGE_SOURCE__LOOP: source.loop: ",
                 "flag: model.threshold: "):
        assert line in text, (line, text)


def test_the_loaded_config_is_validated_and_knows_what_was_set(tmp_path, monkeypatch):
    toml = tmp_path / "edge.toml"
    toml.write_text('[publish]\nlinger_ms = 10\n')
    monkeypatch.setenv("CRACK_EDGE_MODEL__THRESHOLD", "0.25")
    cfg = load_config(toml, {"log_level": "DEBUG"})
    assert type(cfg) is EdgeConfig
    # What the operator set, and only that: a constructed (unvalidated) copy would claim every field.
    assert cfg.model_dump(exclude_unset=True) == {"log_level": "DEBUG", "model": {"threshold": 0.25},
                                                  "publish": {"linger_ms": 10}}
