"""``crack-train export``: a checkpoint's deploy output to ONNX, checked, with its model card.

The ONNX file follows the model contract: input ``image`` float32 [N,3,H,W] (channel order and
normalisation from the variant's registry entry: BGR, (x-127.5)/127.5), output ``crack_prob`` float32
[N,1,H,W], N, H and W dynamic (H, W multiples of the size multiple), opset 17.  The deploy output is
``softmax(mix / t_real)``'s crack channel, t_real from the checkpoint.  The whole card is written into
the ONNX metadata as well as beside it (``models.card.write_card``), so a runtime can run the file alone.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from trainer.errors import DataError

log = logging.getLogger(__name__)
OPSET = 17
PARITY_TOLERANCE = 1e-4


class ExportError(DataError):
    """The exported file does not reproduce PyTorch."""


def parity(head, onnx_path: Path, shapes: list[tuple[int, int, int, int]], seed: int = 0) -> float:
    """Largest |PyTorch - ONNX Runtime| over random inputs of the given shapes."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst = 0.0
    for shape in shapes:
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        with torch.inference_mode():
            ref = head(torch.from_numpy(x)).numpy()
        got = sess.run(["crack_prob"], {"image": x})[0]
        if got.shape != ref.shape:
            raise ExportError(f"{onnx_path}: output shape {got.shape} for input {shape}, PyTorch gives {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def write_onnx(head, out: str | Path) -> Path:
    """Trace a ``DeployHead`` to ``out`` in the model contract (names, dynamic N/H/W, opset); no card."""
    import torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dyn = {0: "N", 2: "H", 3: "W"}
    with warnings.catch_warnings():
        # Expected and harmless: the H/W divisibility check is traced as a constant, and instance
        # norm always uses the input's statistics (which is what train=True means to the exporter).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*instance_norm.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter is what we ship
        torch.onnx.export(head, torch.zeros(1, 3, 64, 64), str(out), opset_version=OPSET, input_names=["image"],
                          output_names=["crack_prob"], dynamic_axes={"image": dyn, "crack_prob": dyn}, dynamo=False)
    return out


def export_untrained(path: str | Path, arch: str = "student", input_size: tuple[int, int] = (64, 64),
                     threshold: float = 0.5, name: str | None = None, seed: int = 0) -> Path:
    """A registered variant with seeded random weights, as ONNX + a minimal card.

    For what measures speed or plumbing (tests, the soak, recordings of the daemon), never accuracy:
    the card has no training section, so nothing mistakes it for a released model.
    """
    import torch

    from models import create_model
    from models.card import ModelCard, write_card
    from models.mcff import DeployHead

    torch.manual_seed(seed)
    path = write_onnx(DeployHead(create_model(arch)).eval(), path)
    write_card(ModelCard(name=name or f"{arch}-random", arch=arch, input_size=input_size, threshold=threshold), path)
    return path


def export(checkpoint: str | Path, out: str | Path, threshold: float | None = None, name: str | None = None,
           parity_size: tuple[int, int] | None = None, input_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Write ``out`` (.onnx) and its card; returns the card as a dict (with ``parity_max_abs_diff``).

    ``input_size`` is the size the card tells runtimes to resize frames to (default: the variant's).
    """
    import onnx

    from models import variant_defaults
    from models.card import ModelCard, sha256_file, write_card
    from models.mcff import DeployHead
    from trainer.labels import load_checkpoint
    from trainer.profile import profile

    out = Path(out)
    if out.suffix != ".onnx":
        raise ExportError(f"{out}: the output must end in .onnx (its card goes beside it as .json)")
    net, meta = load_checkpoint(checkpoint, "cpu")
    head = DeployHead(net, meta.get("deploy_temperature", 1.0)).eval()
    defaults = variant_defaults(meta["arch"])
    size = tuple(input_size or defaults.input_size)
    m = defaults.size_multiple
    if size[0] % m or size[1] % m:
        raise ExportError(f"input size {size[0]}x{size[1]} is not a multiple of {m}")
    write_onnx(head, out)
    if threshold is None:
        threshold = float(meta.get("val", {}).get("val_threshold", defaults.threshold))
        threshold_source = "picked on validation during training"
    else:
        threshold_source = "given to export"
    onnx.checker.check_model(onnx.load(str(out)))
    h, w = parity_size or size
    diff = parity(head, out, [(1, 3, h, w), (2, 3, 96, 128)])
    print(f"parity PyTorch vs ONNX Runtime: max abs diff {diff:.2e} (inputs 1x3x{h}x{w}, 2x3x96x128)")
    if diff > PARITY_TOLERANCE:
        raise ExportError(f"{out}: ONNX output differs from PyTorch by {diff:.2e} > {PARITY_TOLERANCE:g}")
    prof = profile(meta["arch"], size)
    settings = meta.get("settings", {})
    training = {k: meta[k] for k in ("role", "kd", "loss", "data", "seed", "train_images", "val_images",
                                     "label_temperature", "student_temperatures", "deploy_temperature",
                                     "alpha", "teacher_sha256", "init") if k in meta}
    training.update(epochs_trained=meta.get("epoch", -1) + 1, checkpoint=str(checkpoint),
                    checkpoint_sha256=sha256_file(checkpoint), validation=meta.get("val", {}),
                    threshold_source=threshold_source, val_fraction=settings.get("val_fraction"),
                    val_seed=settings.get("val_seed"),
                    recipe={k: settings[k] for k in ("optimizer", "lr", "batch_size", "crop", "samples_per_epoch",
                                                     "scale_min", "scale_max", "max_aspect", "dilate_kernel",
                                                     "dilate_iterations", "augment", "distractor_prob", "epochs", "val_sets",
                                                     "val_max_images", "val_size", "warmup_steps", "ema_decay")
                            if k in settings})  # the start checkpoint: training.init (path, sha256, epoch)
    card = ModelCard(name=name or out.stem, arch=meta["arch"], input_size=size, threshold=threshold,
                     params=prof["params"], gflops=prof["gflops"], training=training,
                     parity_max_abs_diff=diff, opset=OPSET)  # the rest: the variant's defaults
    path = write_card(card, out)
    log.info("event=export onnx=%s card=%s params=%d gflops=%.1f parity=%.2e threshold=%.2f",
             out, path, prof["params"], prof["gflops"], diff, threshold)
    return card.model_dump(mode="json")
