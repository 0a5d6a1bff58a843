"""The size a big frame is run at in 'native' mode: one rule (models.preprocess), the card's scale, logged."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from models.preprocess import DEFAULT_NATIVE_MAX_SIDE, Preprocessor, native_max_side

MODEL = Path(__file__).resolve().parents[1] / "models" / "mcff-student.onnx"


def test_the_rule_operator_then_card_then_default_never_above_the_bound():
    card = SimpleNamespace(native_max_side=640)
    assert native_max_side(card, None, 1920) == (640, "card native_max_side")
    assert native_max_side(card, 1920, 1920) == (1920, "config model.max_side")
    assert native_max_side(SimpleNamespace(), None, 1920) == (DEFAULT_NATIVE_MAX_SIDE, f"default {DEFAULT_NATIVE_MAX_SIDE}")
    assert native_max_side(SimpleNamespace(native_max_side=4000), None, 1920)[0] == 1920
    assert native_max_side(SimpleNamespace(native_max_side=None))[0] == DEFAULT_NATIVE_MAX_SIDE


def test_a_1080p_frame_runs_at_960x540_by_default():
    from models.registry import variant_defaults

    pre = Preprocessor(variant_defaults("student"), "native", max_side=native_max_side(None)[0])
    tensor, seen = pre(np.zeros((1080, 1920, 3), np.uint8))
    assert seen.shape[:2] == (540, 960) and tensor.shape == (1, 3, 540, 960)
    assert pre.downscaled == 1


def test_the_card_carries_its_training_scale():
    from models.card import ModelCard

    card = ModelCard(name="m", training={"recipe": {"crop": 224, "scale_min": 0.6, "scale_max": 1.6, "max_aspect": 1.6}})
    assert card.train_scale == {"crop_px": 224, "scale": [0.6, 1.6], "max_aspect": 1.6}
    assert ModelCard(name="m").train_scale == {} and ModelCard(name="m").native_max_side is None
    with pytest.raises(ValueError, match="native_max_side"):
        ModelCard(name="m", native_max_side=10)


@pytest.mark.parametrize("card_side,config,expect", [
    (None, {}, (DEFAULT_NATIVE_MAX_SIDE, "default 960")),
    (640, {}, (640, "card native_max_side")),
    (640, {"max_side": 1920}, (1920, "config model.max_side")),
])
def test_the_daemon_logs_the_size_it_chose_at_start_up(tmp_path, caplog, card_side, config, expect):
    from edge.config import load_config
    from edge.loader import load_model
    from models.card import load_card, write_card

    if not MODEL.exists():
        pytest.skip(f"{MODEL} not found")
    model = tmp_path / "m.onnx"
    shutil.copy(MODEL, model)
    card = load_card(MODEL)
    card.native_max_side = card_side
    card.inference = "native"
    write_card(card, model)
    cfg = load_config(None, {"model": {"path": str(model), **config},
                             "backend": {"name": "onnxruntime", "precision": "fp32", "threads": 1}})
    with caplog.at_level(logging.INFO, logger="edge.loader"):
        loaded = load_model(cfg)
    loaded.close()
    assert loaded.max_side == expect[0]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=inference_size")]
    assert len(lines) == 1
    assert f"max_side={expect[0]} source='{expect[1]}'" in lines[0]
    assert "mode=native" in lines[0] and "train_crop_px=224" in lines[0]
    assert loaded.preprocessor().max_side == expect[0]
