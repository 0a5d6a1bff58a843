"""The ablation's results: ``ablation.json`` (raw figures), ``ablation.md`` (the table and what it
means) and, with ``collect``, the files worth keeping packed into a few size-capped archives.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import tarfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from trainer.ablation.plan import StepFailed, tname, write_json

if TYPE_CHECKING:
    from trainer.ablation.stages import Ablation

log = logging.getLogger("ablation")


def host_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version(), "host": platform.node()}


def fmt(v: Any, nd: int = 3) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def verdict(rows: list[dict[str, Any]], best_t: tuple[float, float] | None) -> list[str]:
    """Plain sentences on what distillation bought over the plain student, computed from the rows."""
    by = {r["name"]: r for r in rows if r.get("status") == "measured"}
    plain = by.get("plain")
    kd = [r for r in by.values() if r["role"] == "kd"]
    if plain is None or not kd:
        return ["Not enough rows measured to compare distillation with the plain student."]
    lines = []
    pf, pi = plain["test"]["tol2"]["f1"], plain["test"]["strict"]["iou"]
    for r in kd:
        df, di = r["test"]["tol2"]["f1"] - pf, r["test"]["strict"]["iou"] - pi
        lines.append(f"{r['label']}: F1 (2 px) {df:+.3f}, IoU {di:+.3f} against the plain student.")
    better = [r for r in kd if r["test"]["tol2"]["f1"] > pf and r["test"]["strict"]["iou"] > pi]
    if better:
        lines.append(f"Distillation beats the plain student on both test F1 (2 px) and IoU in {len(better)} of "
                     f"{len(kd)} distilled rows.")
    else:
        lines.append(f"Distillation does NOT beat the plain student here: no distilled row has both a higher test "
                     f"F1 (2 px) than {pf:.3f} and a higher IoU than {pi:.3f}.")
    if best_t:
        lines.append(f"Best T by validation (standard KD, validation F1 (2 px) during training): T={tname(best_t[0])} "
                     f"({best_t[1]:.3f}).")
    return lines


def release_candidate(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The student with the best validation F1(2px) (never chosen on test), and its test figures."""
    students = [r for r in rows if r.get("status") == "measured" and r["role"] != "teacher"]
    if not students:
        return None
    r = max(students, key=lambda r: r["val"]["tol2"]["f1"])
    f1, iou = r["test"]["tol2"]["f1"], r["test"]["strict"]["iou"]
    return {"name": r["name"], "chosen_by": "best validation F1 (2 px) among students",
            "val_f1_tol": r["val"]["tol2"]["f1"],
            "test_f1_tol": f1, "test_iou": iou, "meets_targets": f1 >= 0.92 and iou >= 0.50,
            "targets": "F1 (2 px) >= 0.92 and strict IoU >= 0.50 on the CrackForest test split (issue 3)"}


def extra(args: str) -> str:
    return f", `{args}`" if args else ""


def markdown(report: dict[str, Any]) -> str:
    s, rows = report["settings"], report["rows"]
    measured = [r for r in rows if r.get("status") == "measured"]
    n_test = measured[0]["test"]["images"] if measured else "?"
    n_val = measured[0]["val"]["images"] if measured else "?"
    size = s["size"]
    cpu = next((r["cpu"] for r in measured if r["role"] != "teacher"), None) or {}
    out = [f"# {report['title']}", "",
           f"CrackForest test split, {n_test} images, each resized to {size}x{size} and back as the daemon runs it "
           f"(`crack-train eval --mode resize`). One threshold per model, picked on validation ({n_val} images carved "
           f"from CrackForest train, fraction {s['val_fraction']:g}, seed {s['val_seed']}), never on test.", "",
           "| model | params | GFLOPs | P | R | F1 | IoU | F1 (2 px) | CPU ms | threshold | val F1 (2 px) | epochs |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        if r.get("status") != "measured":
            out.append(f"| {r['label']} | " + " | ".join(["—"] * 11) + " |")
            continue
        st, tol, tr = r["test"]["strict"], r["test"]["tol2"], r["training"]
        params = f"{r['params'] / 1e6:.2f} M"
        epochs = f"{tr['epochs']} ({tr['stop']})"
        out.append(f"| {r['label']} | {params} | {r['gflops']:.1f} | {fmt(st['precision'])} | {fmt(st['recall'])} | "
                   f"{fmt(st['f1'])} | {fmt(st['iou'])} | {fmt(tol['f1'])} | {r['cpu']['median_ms']:.1f} | "
                   f"{r['threshold']:.2f} | {fmt(r['val']['tol2']['f1'])} | {epochs} |")
    missing = [f"{r['label']} ({r.get('status')})" for r in rows if r.get("status") != "measured"]
    if missing:
        out += ["", "Rows not measured: " + ", ".join(missing) + "."]
    out += ["", "**What distillation bought**", ""]
    out += [f"- {line}" for line in report["verdict"]]
    rc = report.get("release_candidate")
    if rc:
        meets = "meets" if rc["meets_targets"] else "does NOT meet"
        out += [f"- Release candidate, chosen on validation: `{rc['name']}` (val F1 (2 px) {rc['val_f1_tol']:.3f}); "
                f"on test F1 (2 px) {rc['test_f1_tol']:.3f}, IoU {rc['test_iou']:.3f}: it {meets} the targets "
                f"({rc['targets']})."]
    hyper = report.get("hyperthermal", {})
    teacher_judge = ("ONNX file (ONNX Runtime, as the daemon)" if s["teacher_eval"] == "onnx" else
                     f"checkpoint (PyTorch on {report['host']['gpu'] or 'the CPU'})")
    out += ["", "**Columns**", "",
            "- params, GFLOPs: `crack-train profile` of the variant at "
            f"{size}x{size}; GFLOPs = 2 x multiply-adds of one forward pass.",
            "- P, R, F1, IoU: strict pixel precision, recall, F1 and IoU at the threshold, counts summed over the test "
            "set at the original image size against the raw (undilated) masks.",
            "- F1 (2 px): a predicted crack pixel is correct if a ground-truth crack pixel lies within the radius-2 "
            "disc around it, a ground-truth pixel is found if a predicted one lies within its disc; counts summed.",
            f"- CPU ms: median of {s['bench_runs']} timed runs (teacher: {s['teacher_bench_runs']}) after "
            f"{s['bench_warmup']} untimed ones, one 1x3x{size}x{size} frame through the daemon's ONNX Runtime backend "
            f"(CPUExecutionProvider, onnxruntime {cpu.get('onnxruntime', '?')}, threads: "
            f"{s['bench_threads'] or 'ONNX Runtime default'}) on {report['host']['cpu']} "
            f"({report['host']['cpu_count']} logical CPUs).",
            "- threshold: picked on validation by `crack-train eval --split val --pick-threshold` (best F1 (2 px) "
            "over 0.05 ... 0.95).",
            "- val F1 (2 px): that validation figure at that threshold; epochs: epochs trained and why the run "
            "stopped (budget = its wall-clock budget ran out).",
            f"- Hyperthermal KD: {hyper.get('note', '')}.",
            f"- Teacher judged through its {teacher_judge} (same evaluator, resize and threshold rule); its CPU ms "
            "through its ONNX file.",
            f"- Training: {', '.join(s['train_data'])}; seed {s['seed']}; teacher crop {s['teacher_crop']}, batch "
            f"{s['teacher_batch']}, {s['teacher_samples']} crops/epoch, budget {s['teacher_budget_s']:g} s"
            f"{extra(s['teacher_args'])}; students crop {s['student_crop']}, batch {s['student_batch']}, "
            f"{s['student_samples']} crops/epoch, budget {s['student_budget_s']:g} s each, {s['jobs']} at a time"
            f"{extra(s['student_args'])}; KD alpha {s['alpha']:g}; device {report['host']['gpu'] or 'cpu'}.",
            f"- Raw figures: `ablation.json`. Made by `crack-train ablation` on {report['created']}.", ""]
    return "\n".join(line for line in out if line is not None)


def write_report(ab: Ablation, rows: list[dict[str, Any]]) -> dict[str, Any]:
    cfg = ab.cfg
    best_t = ab.best_t_by_val()
    hyper = next(m for m in ab.students if m.kd == "hyperthermal")
    if not hyper.after_kd:
        note = (f"at T={cfg.hyper_t}, fixed in advance (the published best) and trained in parallel with the "
                "standard-KD students, before the best T by validation was known")
    elif hyper.temperature is not None:
        note = (f"at T={tname(hyper.temperature)}, the T of the standard-KD student with the best validation "
                "F1 (2 px), trained after them")
    else:
        note = "not run"
    if not hyper.after_kd and best_t and tname(best_t[0]) != cfg.hyper_t:
        note += f"; validation later picked T={tname(best_t[0])}, so this row is not at the best T"
    report = {"version": 1, "title": cfg.title, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "host": host_info(), "settings": {**json.loads(cfg.model_dump_json()), "train_data": ab.train_specs},
              "stage_seconds": ab.stage_s, "best_t_by_val": list(best_t) if best_t else None,
              "hyperthermal": {"temperature": hyper.temperature, "note": note}, "rows": rows,
              "verdict": verdict(rows, best_t), "release_candidate": release_candidate(rows),
              "failures": ab.failures}
    write_json(cfg.work / "ablation.json", report)
    (cfg.work / "ablation.md").write_text(markdown(report))
    log.info("event=report json=%s md=%s", cfg.work / "ablation.json", cfg.work / "ablation.md")
    return report


# ------------------------------------------------------------------------------------------ collect


def collect_groups(ab: Ablation, report: dict[str, Any]) -> list[tuple[str, list[Path], bool]]:
    """(name, files, required) to take away; paths under the work folder."""
    w, p = ab.cfg.work, ab.p
    small = [w / "ablation.log", w / "settings.json", *sorted((w / "jobs").glob("*.log")),
             *sorted((w / "bench").glob("*.json")),
             *sorted((w / "profile").glob("*.json")), *sorted((w / "onnx").glob("*.json")),
             *sorted((w / "labels").glob("*/manifest.json")), *sorted((w / "eval").glob("*/report.json")),
             # One picture per model (photo | ground truth | prediction on test); the overlays stay behind.
             *sorted((w / "eval").glob("*-test/figure.png")),
             *[f for r in sorted((w / "runs").glob("*")) for f in sorted(r.glob("*"))
               if f.suffix in (".csv", ".png", ".json")]]
    groups: list[tuple[str, list[Path], bool]] = [("logs", [f for f in small if f.is_file()], True)]
    for r in report["rows"]:
        if r["role"] != "teacher" and r.get("status") == "measured":
            files = [p.run(r["name"]) / "best.pt", p.onnx(r["name"]), p.onnx(r["name"]).with_suffix(".json")]
            groups.append((f"student-{r['name']}", files, True))
    # Soft labels, best T first, only where they fit: they let a student be retrained without the teacher.
    ts = sorted(ab.cfg.temperatures, key=lambda t: (report["best_t_by_val"] is None
                                                    or t != report["best_t_by_val"][0], t))
    for t in ts:
        d = p.labels(t)
        if (d / "manifest.json").exists():
            groups.append((f"labels-T{tname(t)}", sorted(f for f in d.rglob("*") if f.is_file()), False))
    return groups


def tar_estimate(files: Sequence[Path]) -> int:
    """An upper bound on the .tar.gz size: tar blocks and headers; PNG and weights barely compress."""
    return sum(512 + (f.stat().st_size + 511) // 512 * 512 for f in files) + 10240


def collect(ab: Ablation, report: dict[str, Any], dest: Path) -> dict[str, Any]:
    """Pack the groups into at most ``collect_max_files`` files of at most ``collect_max_mib`` each."""
    cfg = ab.cfg
    limit = int(cfg.collect_max_mib * 2**20)
    slots = cfg.collect_max_files - 2  # ablation.json and ablation.md travel as plain files
    bins: list[dict[str, Any]] = []
    skipped = []
    groups = collect_groups(ab, report)
    required = sorted([g for g in groups if g[2]], key=lambda g: -tar_estimate(g[1]))
    total_limit = int(cfg.collect_max_total_mib * 2**20)
    for name, files, req in required + [g for g in groups if not g[2]]:
        size = tar_estimate(files)
        target = next((b for b in bins if b["size"] + size <= limit), None)
        if sum(b["size"] for b in bins) + size > total_limit:
            target = None
        elif target is None and len(bins) < slots and size <= limit:
            target = {"groups": [], "files": [], "size": 0}
            bins.append(target)
        if target is None:
            why = (f"{size / 2**20:.1f} MiB, no room within {cfg.collect_max_files} files of "
                   f"{cfg.collect_max_mib:g} MiB, {cfg.collect_max_total_mib:g} MiB in all")
            if req:
                raise StepFailed(f"collect: {name} ({why}); raise --collect-max-files or lower what is trained")
            skipped.append({"group": name, "reason": why})
            log.warning("event=collect_skip group=%s reason='%s'", name, why)
            continue
        target["groups"].append(name)
        target["files"] += files
        target["size"] += size
    dest.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, b in enumerate(bins, 1):
        fname = f"{b['groups'][0]}.tar.gz" if len(b["groups"]) == 1 else f"bundle-{i}.tar.gz"
        path = dest / fname
        with tarfile.open(path, "w:gz", compresslevel=6) as tar:
            for f in b["files"]:
                tar.add(f, arcname=str(f.relative_to(cfg.work)), recursive=False)
        size = path.stat().st_size
        if size > limit:
            raise StepFailed(f"collect: {path} is {size / 2**20:.1f} MiB > {cfg.collect_max_mib:g} MiB")
        written[fname] = {"groups": b["groups"], "bytes": size}
        log.info("event=collect file=%s groups=%s mib=%.1f", path, ",".join(b["groups"]), size / 2**20)
    info = {"folder": str(dest), "files": written, "skipped": skipped,
            "unpack": "for f in *.tar.gz; do tar xzf \"$f\" -C WORK; done  (paths are relative to the work folder)"}
    report["collected"] = info
    write_json(cfg.work / "ablation.json", report)
    for name in ("ablation.json", "ablation.md"):
        (dest / name).write_bytes((cfg.work / name).read_bytes())
    return info
