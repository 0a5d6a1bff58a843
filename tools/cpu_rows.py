"""The ablation rows that need no GPU: released (or candidate) students, judged like every row.

For each ONNX model given, in the ablation's own convention (docs/ablation.md): a threshold picked
on the CrackForest validation images, then the 46 test images with that threshold; once at 448x448
resize (the table's column) and once at the images' own size (what the card runs at). Plus params,
GFLOPs and the ONNX Runtime CPU ms of one 448x448 frame (``trainer.ablation.stages.time_cpu``, as
`crack-train ablation` times it). The model files are copied first, so their cards are not touched. Prints a Markdown table; ``--json``
writes every figure unrounded.

    python tools/cpu_rows.py models/mcff-student.onnx models/mcff-student-int8.onnx \
        --json docs/ablation-cpu.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import exits  # noqa: E402
from trainer.ablation.report import host_info  # noqa: E402
from trainer.ablation.stages import time_cpu  # noqa: E402
from trainer.evaluate import run_eval  # noqa: E402


def judge(onnx: Path, cfd: Path, work: Path, runs: int, threads: int) -> dict:
    from models.card import load_card

    model = work / onnx.name
    shutil.copy(onnx, model)
    shutil.copy(onnx.with_suffix(".json"), model.with_suffix(".json"))
    card = load_card(model)
    row = {"model": str(onnx), "sha256": card.sha256, "precision": card.precision, "params": card.params,
           "gflops": card.gflops, "modes": {}}
    for mode in ("resize", "native"):
        val = run_eval(model, cfd, "val", work / f"{onnx.stem}-val-{mode}", mode=mode, pick_threshold=True,
                       threads=threads, figure_rows=0, worst=0)
        test = run_eval(model, cfd, "test", work / f"{onnx.stem}-test-{mode}", mode=mode,
                        threshold=val["threshold"], threads=threads, figure_rows=0, worst=0)
        row["modes"][mode] = {"threshold": val["threshold"], "val_f1_tol2": val["metrics"]["tol2"]["f1"],
                              "val_images": val["images"], "test_images": test["images"],
                              "strict": test["metrics"]["strict"], "tol2": test["metrics"]["tol2"],
                              "input_size": test["input_size"]}
    image = sorted((cfd / "images").glob("*.jpg"))[0]
    row["cpu"] = time_cpu(model, image, 448, runs, 3, threads)
    return row


def table(rows: list[dict]) -> str:
    out = ["| model | precision | mode | params | GFLOPs | threshold (val) | val F1 (2 px) | P | R | F1 | IoU "
           "| F1 (2 px) | CPU ms 448x448 |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        for mode, m in r["modes"].items():
            s = m["strict"]
            out.append(f"| {Path(r['model']).name} | {r['precision']} | {mode} | {r['params']:,} | {r['gflops']} "
                       f"| {m['threshold']:.2f} | {m['val_f1_tol2']:.3f} | {s['precision']:.3f} | {s['recall']:.3f} "
                       f"| {s['f1']:.3f} | {s['iou']:.3f} | {m['tol2']['f1']:.3f} | {r['cpu']['median_ms']:.0f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", type=Path, help="NAME.onnx files with their cards")
    ap.add_argument("--cfd", type=Path, default=Path("../shared/datasets/crackforest"), help="CrackForest folder")
    ap.add_argument("--runs", type=int, default=20, help="timed CPU runs per model")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    ap.add_argument("--json", type=Path, help="write the raw figures here")
    ns = ap.parse_args(argv)
    for m in ns.models:
        if not m.is_file() or not m.with_suffix(".json").is_file():
            print(f"cpu_rows: {m}: model or its card not found", file=sys.stderr)
            return exits.NOINPUT
    with tempfile.TemporaryDirectory() as tmp:
        rows = [judge(m, ns.cfd, Path(tmp), ns.runs, ns.threads) for m in ns.models]
    print(table(rows))
    if ns.json:
        ns.json.write_text(json.dumps({"host": host_info(), "argv": sys.argv, "rows": rows}, indent=2) + "\n")
    return exits.OK


if __name__ == "__main__":
    sys.exit(main())
