"""The TensorRT backend's deciding logic against a stand-in with the TensorRT API's shape.

TensorRT cannot be installed here (tests/edge/trt_standin.py says what the stand-in models and
why).  Each test is named after the issue #20 item it guards; the ONNX files, the card, the
engine cache, the sidecar and ONNX Runtime (which computes the stand-in engine's outputs) are real.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from common import exits
from edge.backends.base import BackendError, create_backend
from edge.backends.tensorrt import (EngineIdentity, Profile, TensorRTBackend, build_plan,
                                    default_precision, full_version, profile_from_options)
from models.card import ModelCard, load_card
from trt_standin import StandIn

REPO = Path(__file__).resolve().parents[2]
SMALL = {"min": [32, 32], "opt": [64, 64], "max": [128, 128]}


def tiny_onnx(path: Path, *, dtype: int = TensorProto.FLOAT, extra_output: bool = False,
              external: bool = False) -> Path:
    """image [1,3,H,W] -> crack_prob [1,1,H,W] = sigmoid(mean over channels * w); optional second output."""
    w = numpy_helper.from_array(np.array([2.0], np.float16 if dtype == TensorProto.FLOAT16 else np.float32), "w")
    nodes = [helper.make_node("ReduceMean", ["image"], ["m"], axes=[1], keepdims=1),
             helper.make_node("Mul", ["m", "w"], ["s"]),
             helper.make_node("Sigmoid", ["s"], ["crack_prob"])]
    outputs = [helper.make_tensor_value_info("crack_prob", dtype, [1, 1, "H", "W"])]
    if extra_output:
        nodes.append(helper.make_node("Neg", ["s"], ["aux"]))
        outputs.append(helper.make_tensor_value_info("aux", dtype, [1, 1, "H", "W"]))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", dtype, [1, 3, "H", "W"])],
                              outputs, [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return path


def card_for(path: Path, precision: str = "fp32") -> ModelCard:
    return ModelCard(name=path.stem, input_size=(64, 64), precision=precision)


def backend(path: Path, card: ModelCard, tmp_path: Path, **options) -> TensorRTBackend:
    opts = {"cache_dir": str(tmp_path / "cache"), "profile": SMALL, "warm_size": (64, 64), **options}
    return create_backend("tensorrt", path, card, **opts)


@pytest.fixture
def standin(monkeypatch):
    def make(version: str = "10.3.0", **kw) -> StandIn:
        return StandIn(version, **kw).install(monkeypatch)
    return make


@pytest.fixture
def student(tmp_path):
    """The released fp32 student and its INT8 Q/DQ sibling, with their cards, copied into tmp_path."""
    for name in ("mcff-student.onnx", "mcff-student.json", "mcff-student-int8.onnx", "mcff-student-int8.json"):
        shutil.copy(REPO / "models" / name, tmp_path / name)
    return tmp_path / "mcff-student.onnx", tmp_path / "mcff-student-int8.onnx"


def x(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (1, 3, h, w)).astype(np.float32)


# ------------------------------------------------------------------ the plan per version and precision

@pytest.mark.parametrize("version, precision, model, strong, flags", [
    ("10.3.0", "fp32", "fp32", False, ()),
    ("10.3.0", "fp16", "fp32", False, ("FP16",)),
    ("10.3.0", "bf16", "fp32", False, ("BF16",)),
    ("10.3.0", "int8", "int8", False, ("INT8", "FP16")),   # item 1: INT8 as well, or 10.3 will not build Q/DQ
    ("10.3.0", "fp16", "fp16", True, ()),
    ("10.11.0", "int8", "int8", False, ("INT8", "FP16")),
    ("10.12.0", "int8", "int8", True, ()),                 # strongly typed: the Q/DQ nodes are the types
    ("10.12.0", "fp32", "fp32", True, ()),
    ("10.13.3.9", "fp16", "fp32", False, ("FP16",)),        # deprecated, still the only route from an fp32 file
    ("11.0.0", "fp32", "fp32", True, ()),
    ("11.0.0", "int8", "int8", True, ()),
    ("11.4.1", "fp16", "fp16", True, ()),
])
def test_build_plan_per_version_and_precision(version, precision, model, strong, flags):
    plan = build_plan(version, precision, model, (8, 7))
    assert (plan.precision, plan.strongly_typed, plan.set_flags) == (precision, strong, flags)
    assert plan.clear_flags == (("TF32",) if precision == "fp32" else ())  # item 7


@pytest.mark.parametrize("version, precision, model, cc, says", [
    ("8.6.2", "fp16", "fp32", (8, 7), "TensorRT 8.6.2 is too old"),       # JetPack 6.0
    ("12.0.0", "fp16", "fp32", (8, 7), "TensorRT 12.0.0 is newer than this backend knows"),
    ("11.0.0", "fp16", "fp32", (8, 7), "TensorRT 11.0.0 removed BuilderFlag.FP16"),  # item 6
    ("11.0.0", "bf16", "fp32", (8, 7), "TensorRT 11.0.0 removed BuilderFlag.BF16"),
    ("10.3.0", "bf16", "fp32", (7, 2), "bf16 needs compute capability 8.0"),         # item 2: Xavier
    ("10.3.0", "int8", "fp32", (8, 7), "needs an INT8 Q/DQ model"),
    ("10.3.0", "fp16", "int8", (8, 7), "the model is int8 (Q/DQ); precision fp16 needs the fp32 model"),
    ("10.12.0", "fp32", "int8", (8, 7), "the model is int8"),
    ("10.3.0", "fp64", "fp32", (8, 7), "precision 'fp64'"),
    ("ten", "fp16", "fp32", (8, 7), "cannot be read"),
])
def test_build_plan_refusals_name_the_version_and_the_reason(version, precision, model, cc, says):
    with pytest.raises(BackendError) as e:
        build_plan(version, precision, model, cc)
    assert says in str(e.value)


@pytest.mark.parametrize("version", ["10.0.1", "10.3.0", "10.11.0", "10.12.0", "10.13.3.9", "11.0.0", "11.4.0.106"])
def test_no_plan_asks_a_version_for_what_it_lacks_or_mixes_strong_typing_with_flags(version):
    flags = {f.name for f in StandIn(version).trt.BuilderFlag}
    for precision in ("fp32", "fp16", "bf16", "int8"):
        for model in ("fp32", "fp16", "int8"):
            try:
                plan = build_plan(version, precision, model, (8, 7))
            except BackendError as e:
                assert version.split(".")[0] in str(e) or "model" in str(e) or "needs" in str(e)
                continue
            assert set(plan.set_flags) <= flags, (version, precision, model, plan)
            assert not (plan.strongly_typed and set(plan.set_flags) & {"FP16", "INT8", "BF16"})
            assert plan.precision == precision


def test_default_precision_is_fp16_on_a_gpu_unless_the_model_or_version_fixes_it():  # item 2
    assert default_precision("10.3.0", "fp32")[0] == "fp16"
    assert default_precision("10.3.0", "int8")[0] == "int8"
    precision, why = default_precision("11.0.0", "fp32")
    assert precision == "fp32" and "strongly typed" in why


# ------------------------------------------------------------------ item 1: INT8 engines

def test_item1_int8_qdq_model_builds_with_the_int8_flag_on_10_3(standin, student, tmp_path):
    si = standin("10.3.0")
    _, int8 = student
    b = backend(int8, load_card(int8), tmp_path, precision="int8")
    b.load()
    assert si.configs[-1].flag_names() >= {"INT8", "FP16"} and not si.networks[-1].strongly_typed
    assert b.describe()["precision"] == "int8" and b.infer(x()).shape == (1, 1, 64, 64)
    b.close()


def test_item1_int8_qdq_model_builds_strongly_typed_from_10_12(standin, student, tmp_path):
    si = standin("10.12.0")
    _, int8 = student
    b = backend(int8, load_card(int8), tmp_path, precision="int8")
    b.load()
    assert si.networks[-1].strongly_typed and not si.configs[-1].flag_names() & {"FP16", "INT8", "BF16"}
    b.close()


# ------------------------------------------------------------------ item 2: default fp16, bf16 for real

def test_item2_default_build_is_fp16_and_bf16_is_built_as_bf16(standin, tmp_path):
    si = standin("10.3.0")
    m = tiny_onnx(tmp_path / "m.onnx")
    b = backend(m, card_for(m), tmp_path)
    b.load()
    assert "FP16" in si.configs[-1].flag_names() and b.describe()["precision"] == "fp16"
    b.close()
    b = backend(m, card_for(m), tmp_path, precision="bf16")
    b.load()
    assert "BF16" in si.configs[-1].flag_names() and b.describe()["precision"] == "bf16"
    b.close()


def test_item2_bf16_on_a_gpu_without_it_is_refused(standin, tmp_path):
    standin("10.3.0", gpu_name="Xavier", cc=(7, 2))
    m = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(BackendError, match="bf16 needs compute capability 8.0"):
        backend(m, card_for(m), tmp_path, precision="bf16").load()


# ------------------------------------------------------------------ item 3: every return value checked

def test_item3_a_refused_input_shape_is_a_backend_error(standin, tmp_path):
    standin()
    m = tiny_onnx(tmp_path / "m.onnx")
    b = backend(m, card_for(m), tmp_path, precision="fp32")
    b.load()
    b.context.set_input_shape = lambda name, shape: False  # what TensorRT answers for a shape it will not take
    with pytest.raises(BackendError, match="refused input shape"):
        b.infer(x())
    b.close()


def test_item3_batch_of_two_is_refused_clearly(standin, tmp_path):
    standin()
    m = tiny_onnx(tmp_path / "m.onnx")
    b = backend(m, card_for(m), tmp_path, precision="fp32")
    b.load()
    with pytest.raises(BackendError, match=r"\[1, 3, H, W\]"):
        b.infer(np.zeros((2, 3, 64, 64), np.float32))
    b.close()


def test_item3_no_execution_context_is_refused_at_load(standin, tmp_path):
    si = standin()
    si.out_of_memory = True
    m = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(BackendError, match="execution context"):
        backend(m, card_for(m), tmp_path, precision="fp32").load()
    assert si.context.detached  # what load() had taken is given back


# ------------------------------------------------------------------ item 4: cache and rebuild

def test_item4_cached_engine_that_fails_to_deserialise_is_rebuilt(standin, tmp_path, caplog):
    m = tiny_onnx(tmp_path / "m.onnx")
    first = standin("10.3.0", build="10.3.0.26")
    b = backend(m, card_for(m), tmp_path, precision="fp32")
    b.load()
    b.close()
    assert first.builds == 1
    # Same version string, another build (JetPack update): the sidecar fits, TensorRT refuses the bytes.
    second = standin("10.3.0", build="10.3.0.30")
    b = backend(m, card_for(m), tmp_path, precision="fp32")
    b.load()
    assert second.builds == 1 and "could not deserialise" in caplog.text and "action=rebuild" in caplog.text
    assert len(list((tmp_path / "cache").glob("*.engine"))) == 1  # the bad entry replaced, not kept
    b.close()


def test_item4_compute_capability_is_in_the_cache_key(standin, tmp_path):
    m = tiny_onnx(tmp_path / "m.onnx")
    standin("10.3.0", gpu_name="Orin", cc=(8, 7))
    b = backend(m, card_for(m), tmp_path, precision="fp32")
    b.load()
    b.close()
    other = standin("10.3.0", gpu_name="Orin", cc=(8, 9))  # same name, another chip
    b = backend(m, card_for(m), tmp_path, precision="fp32")
    b.load()
    b.close()
    assert other.builds == 1 and len(list((tmp_path / "cache").glob("*.engine"))) == 2
    p = Profile((32, 32), (64, 64), (128, 128))
    keys = {EngineIdentity("ab" * 32, "10.3.0.30", "Orin", "fp16", p, cc).key() for cc in ("8.7", "8.9")}
    assert len(keys) == 2 and any("-sm87-" in k for k in keys)


def test_item4_full_version_carries_the_build_number():
    class T:
        __version__ = "10.3.0"

    dists = {"tensorrt-cu12": "10.3.0.30", "tensorrt": "10.3.0"}

    def lookup(name):
        if name not in dists:
            raise LookupError(name)
        return dists[name]

    assert full_version(T, lookup, lambda trt: None) == "10.3.0.30"
    assert full_version(T, lambda n: (_ for _ in ()).throw(LookupError(n)), lambda trt: 30) == "10.3.0.30"
    assert full_version(T, lambda n: (_ for _ in ()).throw(LookupError(n)), lambda trt: None) == "10.3.0"


# ------------------------------------------------------------------ item 5: the daemon's size, warm-up

def test_item5_profile_optimum_is_the_daemon_size_and_load_warms_up_at_it(standin, tmp_path):
    si = standin()
    m = tiny_onnx(tmp_path / "m.onnx")
    b = backend(m, card_for(m), tmp_path, precision="fp32", warm_size=(96, 128), profile=None)
    b.load()
    lo, opt, hi = si.configs[-1].profiles[0].shapes["image"]
    assert opt == [1, 3, 96, 128] and hi[2] >= 96 and hi[3] >= 128
    assert b.context.shapes["image"] == (1, 3, 96, 128)  # one inference ran at load, at that size
    b.close()
    assert profile_from_options({}, (320, 480)).opt_hw == (320, 480)


def test_item5_prebuilt_engine_that_cannot_take_the_daemon_size_is_refused_at_load(standin, tmp_path):
    from trainer.engine import build_engine

    standin()
    m = tiny_onnx(tmp_path / "m.onnx")
    from models.card import write_card

    write_card(card_for(m), m)
    engine = build_engine(m, precision="fp32", size=(64, 64))
    b = create_backend("tensorrt", engine, load_card(m), warm_size=(96, 96))
    with pytest.raises(BackendError, match="outside the engine's profile"):
        b.load()


# ------------------------------------------------------------------ item 6: TensorRT 11

def test_item6_tensorrt_11_refuses_fp16_from_fp32_and_builds_what_it_can(standin, student, tmp_path):
    si = standin("11.0.0")
    m = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(BackendError, match="TensorRT 11.0.0 removed BuilderFlag.FP16"):
        backend(m, card_for(m), tmp_path, precision="fp16").load()
    b = backend(m, card_for(m), tmp_path)  # unset: fp32 here, logged with why
    b.load()
    assert b.describe()["precision"] == "fp32" and si.networks[-1].strongly_typed
    b.close()
    _, int8 = student
    b = backend(int8, load_card(int8), tmp_path, precision="int8")
    b.load()
    b.close()


def test_item6_a_missing_api_is_a_refusal_not_a_traceback(standin, tmp_path, monkeypatch):
    import trt_standin

    si = standin("10.3.0")
    monkeypatch.setattr(si.trt, "BuilderFlag", trt_standin._Flag11)  # bindings without the FP16 flag
    m = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(BackendError, match="TensorRT 10.3.0 lacks an API this backend uses"):
        backend(m, card_for(m), tmp_path, precision="fp16").load()
    assert si.context.detached


def test_item6_via_the_loader_a_refusal_exits_78_naming_the_version(standin, student, tmp_path):
    from edge.config import load_config
    from edge.loader import StartupError, load_model

    standin("11.0.0")
    fp32, _ = student
    cfg = load_config(None, {"model": {"path": str(fp32), "inference_size": (64, 64)},
                             "backend": {"name": "tensorrt", "precision": "fp16", "cache_dir": str(tmp_path / "c")}})
    with pytest.raises(StartupError) as e:
        load_model(cfg)
    assert e.value.code == exits.CONFIG == 78 and "TensorRT 11.0.0" in str(e.value)


# ------------------------------------------------------------------ item 7: fp32 without TF32

def test_item7_fp32_builds_clear_tf32_and_the_builder_level_reaches_the_config(standin, tmp_path):
    si = standin()
    m = tiny_onnx(tmp_path / "m.onnx")
    b = backend(m, card_for(m), tmp_path, precision="fp32", opt_level=1)
    b.load()
    assert "TF32" not in si.configs[-1].flag_names() and si.configs[-1].builder_optimization_level == 1
    b.close()


# ------------------------------------------------------------------ item 8: tensors, dtypes, files, close

def test_item8_every_io_tensor_gets_an_address(standin, tmp_path):
    standin()
    m = tiny_onnx(tmp_path / "m.onnx", extra_output=True)
    b = backend(m, card_for(m), tmp_path, precision="fp32")
    b.load()
    want = ort.InferenceSession(str(m), providers=["CPUExecutionProvider"]).run(["crack_prob"], {"image": x()})[0]
    assert np.allclose(b.infer(x()), want, atol=1e-6)
    b.close()


def test_item8_dtypes_come_from_the_engine(standin, tmp_path):
    standin("10.3.0")
    m = tiny_onnx(tmp_path / "m16.onnx", dtype=TensorProto.FLOAT16)
    b = backend(m, card_for(m, "fp16"), tmp_path)
    b.load()
    sess = ort.InferenceSession(str(m), providers=["CPUExecutionProvider"])
    want = sess.run(["crack_prob"], {"image": x(64, 96).astype(np.float16)})[0].astype(np.float32)
    got = b.infer(x(64, 96))
    assert got.dtype == np.float32 and got.shape == (1, 1, 64, 96) and np.allclose(got, want, atol=1e-3)
    assert b.tensors["image"][1] == np.float16 and b.tensors["crack_prob"][1] == np.float16
    b.close()


def test_item8_external_data_weights_are_found(standin, tmp_path):
    standin()
    m = tiny_onnx(tmp_path / "ext.onnx", external=True)
    assert (tmp_path / "ext.onnx.data").exists()
    b = backend(m, card_for(m), tmp_path, precision="fp32")
    b.load()
    b.close()


def test_item8_close_frees_runtime_engine_and_context_before_the_cuda_context(standin, tmp_path):
    si = standin()
    m = tiny_onnx(tmp_path / "m.onnx")
    b = backend(m, card_for(m), tmp_path, precision="fp32")
    b.load()
    b.infer(x())
    assert si.memory  # device buffers held
    b.close()
    assert si.detached_with_alive == [0] and not si.memory
    b.close()  # twice is fine


def test_item8_int8_without_qdq_is_refused_not_calibrated(standin, student, capsys):
    from trainer.cli import main

    standin()
    fp32, _ = student
    assert main(["engine", "--onnx", str(fp32), "--precision", "int8"]) == 78
    err = capsys.readouterr().err
    assert "Q/DQ" in err and "crack-train quantize" in err and "Traceback" not in err


def test_cache_rebuilds_after_the_profile_changes(standin, tmp_path):
    si = standin()
    m = tiny_onnx(tmp_path / "m.onnx")
    for prof in (SMALL, {"min": [32, 32], "opt": [64, 64], "max": [256, 256]}, SMALL):
        b = backend(m, card_for(m), tmp_path, precision="fp32", profile=prof)
        b.load()
        b.close()
    assert si.builds == 2 and len(list((tmp_path / "cache").glob("*.engine"))) == 2
