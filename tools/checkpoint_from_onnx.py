"""A crack-train checkpoint rebuilt from an exported ONNX file, so ``--init`` can start from a release.

The released ``models/mcff-student.onnx`` is all that survives of the run that made it (run folders
are not committed).  The exporter keeps every weight as an initializer named ``net.<state_dict key>``
(batch-norm is not folded), so the weights can be read back exactly.  The rebuilt network is checked
against the ONNX file through ONNX Runtime on one input before the checkpoint is written.

    python tools/checkpoint_from_onnx.py models/mcff-student.onnx runs/release-init.pt

Exit status: 0 written, 65 the file's weights do not fit its card's variant or disagree with the graph,
66 no such file.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from common import exits


def rebuild(onnx_path: Path) -> tuple[object, dict]:
    """(network with the file's weights, checkpoint meta); ValueError when they do not fit."""
    import onnx
    import torch
    from onnx import numpy_helper

    from models import create_model
    from models.card import load_card, sha256_file

    card = load_card(onnx_path)
    net = create_model(card.arch)
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(onnx_path)).graph.initializer}
    state = net.state_dict()
    missing = []
    for key, value in state.items():
        w = weights.get("net." + key, weights.get(key))
        if w is None:
            if key.endswith("num_batches_tracked"):  # a counter, not used in eval or by AdamW
                continue
            missing.append(key)
            continue
        if tuple(w.shape) != tuple(value.shape):
            raise ValueError(f"{onnx_path}: {key} is {w.shape} in the file, {tuple(value.shape)} in {card.arch}")
        state[key] = torch.from_numpy(np.array(w)).to(value.dtype)
    if missing:
        raise ValueError(f"{onnx_path}: no weights for {len(missing)} parameters of {card.arch}, e.g. {missing[:3]}")
    net.load_state_dict(state)
    meta = {"arch": card.arch, "role": card.training.get("role", "plain-student"),
            "deploy_temperature": float(card.training.get("deploy_temperature", 1.0)),
            "from_onnx": {"path": str(onnx_path), "sha256": sha256_file(onnx_path), "name": card.name},
            "val": {"val_threshold": card.threshold}}
    return net, meta


def check_parity(net, meta: dict, onnx_path: Path, size: tuple[int, int] = (64, 96)) -> float:
    """Largest |PyTorch - ONNX Runtime| on one random normalised input."""
    import onnxruntime as ort

    from trainer.inference import TorchPredictor

    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, *size)).astype(np.float32)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    got = TorchPredictor(net.eval(), "cpu", meta["deploy_temperature"])(x)
    return float(np.abs(ref - got).max())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("onnx", type=Path, help="exported NAME.onnx (with its card)")
    ap.add_argument("out", type=Path, help="checkpoint to write (e.g. runs/release-init.pt)")
    ns = ap.parse_args(argv)
    if not ns.onnx.is_file():
        print(f"checkpoint_from_onnx: {ns.onnx}: not found", file=sys.stderr)
        return exits.NOINPUT
    import torch

    try:
        net, meta = rebuild(ns.onnx)
        diff = check_parity(net, meta, ns.onnx)
    except ValueError as e:
        print(f"checkpoint_from_onnx: {e}", file=sys.stderr)
        return exits.DATAERR
    if diff > 1e-4:
        print(f"checkpoint_from_onnx: {ns.onnx}: rebuilt network differs from the graph by {diff:.2g}",
              file=sys.stderr)
        return exits.DATAERR
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "meta": meta}, ns.out)
    print(f"{ns.out}: {meta['arch']} from {ns.onnx} (parity max abs diff {diff:.2g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
