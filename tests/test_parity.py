"""The threshold `crack-train eval` picks is the one the vehicle runs: both paths give equal probabilities.

The same frames go through `crack-train eval`'s path (trainer.evaluate.load_model + score, i.e.
trainer.inference and models.preprocess) and through the daemon's (edge.loader.load_model: the
card-driven backend choice, the Preprocessor the pipeline uses, backend.infer, Preprocessor.crop),
with the released model and real ONNX Runtime.  Frames: CrackForest photos where the dataset is
there, drawn roads otherwise, plus one larger than the native-size rule (scaled down by both).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import load_config
from edge.loader import load_model as daemon_load
from models.preprocess import Preprocessor, native_max_side, to_frame
from trainer.data import Pair, list_pairs
from trainer.evaluate import load_model as eval_load
from trainer.evaluate import score

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "mcff-student.onnx"
CFD = ROOT.parent / "shared" / "datasets" / "crackforest"
if not CFD.exists():
    CFD = Path("/work/shared/datasets/crackforest")


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> list[Pair]:
    """Three image/mask pairs on disk: two road photos and one 1280x720 frame (above the 960 rule)."""
    from tests.trainer.conftest import draw_crack_pair

    out = tmp_path_factory.mktemp("parity")
    (out / "images").mkdir()
    (out / "masks").mkdir()
    if CFD.exists():
        photos = [(cv2.imread(str(p.image)), cv2.imread(str(p.mask), 0)) for p in list_pairs(CFD, "test")[:2]]
    else:
        rng = np.random.default_rng(0)
        photos = [draw_crack_pair(rng, 320, 480) for _ in range(2)]
    big = (cv2.resize(photos[0][0], (1280, 720)), cv2.resize(photos[0][1], (1280, 720), interpolation=cv2.INTER_NEAREST))
    pairs = []
    for i, (img, mask) in enumerate(photos + [big]):
        cv2.imwrite(str(out / "images" / f"{i}.png"), img)
        cv2.imwrite(str(out / "masks" / f"{i}.png"), mask)
        pairs.append(Pair(out / "images" / f"{i}.png", out / "masks" / f"{i}.png", "parity"))
    return pairs


def _daemon_probs(cfg, pairs: list[Pair]) -> tuple[dict[str, np.ndarray], object]:
    model = daemon_load(cfg)
    try:
        pre = model.preprocessor()
        probs = {}
        for p in pairs:
            img = cv2.imread(str(p.image))
            tensor, seen = pre(img)
            prob = pre.crop(model.backend.infer(tensor), seen)  # what the pipeline thresholds
            probs[p.name] = to_frame(prob, img.shape[:2])  # and eval scores at the frame's size
        return probs, model
    finally:
        model.close()


@pytest.mark.parametrize("precision,mode", [("fp32", "native"), ("fp32", "resize"), ("int8", "native")])
def test_eval_and_the_daemon_give_equal_probabilities(frames, precision, mode):
    if not MODEL.exists():
        pytest.skip(f"{MODEL} not found")
    model = MODEL if precision == "fp32" else MODEL.with_name("mcff-student-int8.onnx")
    if not model.exists():
        pytest.skip(f"{model} not found")
    size = "native" if mode == "native" else [448, 448]
    cfg = load_config(None, {"model": {"path": str(MODEL), "inference_size": size},
                             "backend": {"name": "onnxruntime", "precision": precision, "threads": 1}})
    if (precision, mode) != ("fp32", "native"):
        frames = frames[:2]  # the 1280x720 frame once is enough (it is the slow one)
    daemon, loaded = _daemon_probs(cfg, frames)
    assert Path(loaded.path).name == model.name  # the daemon ran the file eval judges

    m = eval_load(model, threads=1)
    _, probs, _ = score(m.predict, frames, m.spec, mode, m.input_size)
    for p in frames:
        assert probs[p.name].shape == daemon[p.name].shape
        np.testing.assert_allclose(probs[p.name], daemon[p.name], rtol=0, atol=1e-6, err_msg=p.name)
    # The parity covers a frame the rule scales down, at the side both took from the card.
    if len(frames) == 3:
        assert loaded.max_side == native_max_side(m.spec)[0] < 1280
    assert m.threshold == loaded.threshold  # the threshold eval records is the one the daemon applies


def test_the_frame_the_network_sees_is_the_same_buffer_math():
    """models.preprocess.normalise (training crops) equals what Preprocessor writes for the daemon."""
    from models.card import load_card
    from models.preprocess import normalise

    if not MODEL.exists():
        pytest.skip(f"{MODEL} not found")
    card = load_card(MODEL)
    img = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    tensor, _ = Preprocessor(card, "native")(img)
    np.testing.assert_array_equal(tensor[0], normalise(img, card))
