"""trainer.config through the shared loader: unknown environment names refused, every error at once."""
from __future__ import annotations

from pathlib import Path

import pytest

from trainer.cli import main
from trainer.config import TrainSettings, load_settings
from trainer.errors import ConfigError


def test_an_unknown_train_variable_is_an_error_naming_it(monkeypatch):
    monkeypatch.setenv("CRACK_TRAIN_BATCHSIZE", "3")
    with pytest.raises(ConfigError, match="env CRACK_TRAIN_BATCHSIZE: unknown setting .*batch_size"):
        load_settings()
    monkeypatch.delenv("CRACK_TRAIN_BATCHSIZE")
    monkeypatch.setenv("CRACK_TRAIN_BATCH_SIZE", "3")
    assert load_settings().batch_size == 3


def test_the_cli_exits_78_on_an_unknown_variable(monkeypatch, tiny_data, tmp_path, train_argv, capsys):
    monkeypatch.setenv("CRACK_TRAIN_EPOCH", "1")
    assert main(["student", "--plain", *train_argv(tiny_data, tmp_path / "r", "--epochs", "1")]) == 78
    assert "CRACK_TRAIN_EPOCH" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_every_problem_is_reported_at_once(tmp_path: Path, monkeypatch):
    toml = tmp_path / "train.toml"
    toml.write_text('[train]\ncrops = 96\nlr = -1\n')
    monkeypatch.setenv("CRACK_TRAIN_EPOCHS", "many")
    with pytest.raises(ConfigError) as e:
        load_settings(toml, optimizer="sgd")
    text = str(e.value)
    for line in (f"{toml}: crops: unknown key", f"{toml}: lr: ", "env CRACK_TRAIN_EPOCHS: epochs: ",
                 "flag: optimizer: "):
        assert line in text, (line, text)


def test_settings_are_validated_and_know_what_was_set(tmp_path: Path, monkeypatch):
    toml = tmp_path / "train.toml"
    toml.write_text('crop = 96\n')  # no [train] table: the top level is read
    monkeypatch.setenv("CRACK_TRAIN_DATA", '["a:train", "b:train@0.5"]')
    cfg = load_settings(toml, epochs=3, lr=None)
    assert type(cfg) is TrainSettings
    # Only what was given counts as set; a model_construct copy would claim all forty fields.
    assert cfg.model_dump(exclude_unset=True) == {"crop": 96, "data": ["a:train", "b:train@0.5"], "epochs": 3}
    with pytest.raises(ConfigError, match="crop 30 must be a multiple of 4"):
        load_settings(None, crop=30)
