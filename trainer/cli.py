"""crack-train: one sub-command per step, each a thin layer over a function with explicit paths.

    crack-train teacher   step 1: train the teacher on hard labels
    crack-train labels    step 2: the teacher's soft labels at temperature T, with a manifest
    crack-train student   step 3: distil a student (or --plain: train one without a teacher)
    crack-train eval      judge a checkpoint or ONNX file on a split; --pick-threshold on val
    crack-train export    a checkpoint's deploy output to ONNX + model card
    crack-train profile   parameters and GFLOPs of a registered variant
    crack-train engine    a TensorRT engine + sidecar the daemon runs, where TensorRT is installed
    crack-train quantize  INT8 QDQ ONNX calibrated on training images, refused if validation F1(2px) drops
    crack-train ablation  teacher, soft labels, students, judged side by side, budgeted and resumable

Several processes (GPUs, machines): teacher, student, labels and profile --train run under torchrun,
e.g. `torchrun --nproc-per-node 4 --no-python crack-train student ...`; --batch-size stays the global
batch (docs/training.md, "Several GPUs or machines").

Exit status: 0 done, 2 usage, 65 bad data, 66 missing input, 69 tool unavailable, 78 bad config,
130 interrupted (resume with the same command and --resume).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import typing
from pathlib import Path
from typing import Any, Sequence

from common import exits
from trainer.config import TrainSettings, load_settings
from trainer.errors import ConfigError, TrainerError

log = logging.getLogger("trainer")


def _add_settings_flags(p: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One flag per TrainSettings field, default None so unset flags leave env/TOML values alone."""
    p.add_argument("--config", type=Path, help="TOML file with training settings (a [train] table or top level)")
    for name, field in TrainSettings.model_fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        ann = field.annotation
        args = typing.get_args(ann)
        kw: dict[str, Any] = {"default": None, "help": field.description}
        if ann is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(ann) is list or any(typing.get_origin(a) is list for a in args):
            kw["nargs"] = "+"
            if name == "data":
                kw["action"] = "extend"
        else:
            choices = next((typing.get_args(a) for a in (ann, *args) if typing.get_origin(a) is typing.Literal), None)
            if choices:
                kw["choices"] = choices
        p.add_argument(flag, dest=name, **kw)


def parse_settings_flags(tokens: Sequence[str]) -> dict[str, Any]:
    """The TrainSettings fields that crack-train flags set (e.g. an ablation's ``--loss asymmetric``).

    ValueError names a flag that is not a training setting or a value that does not parse.
    """
    p = argparse.ArgumentParser(prog="crack-train", add_help=False, exit_on_error=False, allow_abbrev=False)
    _add_settings_flags(p)
    try:
        ns, rest = p.parse_known_args(list(tokens))
    except argparse.ArgumentError as e:
        raise ValueError(str(e)) from None
    if rest:
        raise ValueError(f"{' '.join(rest)}: not a crack-train training flag")
    return {k: v for k, v in vars(ns).items() if v is not None and k != "config"}


def _settings(ns: argparse.Namespace, **forced: Any) -> TrainSettings:
    flags = {k: getattr(ns, k, None) for k in TrainSettings.model_fields}
    flags.update(forced)
    return load_settings(ns.config, **flags)


def cmd_teacher(ns: argparse.Namespace) -> int:
    from trainer import distributed
    from trainer.teacher import train_teacher

    cfg = _settings(ns, arch=ns.arch or "teacher")
    with distributed.session(cfg.device, cfg.dist_timeout) as world:
        r = train_teacher(cfg)
    if world.is_main:
        print(f"best epoch {r.best_epoch}: val F1(2px) {r.best_val_f1_tol:.4f}; checkpoint {r.run_dir / 'best.pt'}")
    return 0


def cmd_student(ns: argparse.Namespace) -> int:
    from trainer import distributed
    from trainer.student import train_distilled_student, train_plain_student

    cfg = _settings(ns)
    with distributed.session(cfg.device, cfg.dist_timeout) as world:
        r = train_plain_student(cfg) if ns.plain else train_distilled_student(cfg)
    if world.is_main:
        print(f"best epoch {r.best_epoch}: val F1(2px) {r.best_val_f1_tol:.4f}; checkpoint {r.run_dir / 'best.pt'}")
    return 0


def cmd_labels(ns: argparse.Namespace) -> int:
    from trainer import distributed
    from trainer.labels import generate_label_sets
    from trainer.loop import pick_device
    from trainer.sets import train_pair_sets

    cfg = _settings(ns)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    pairs = [p for pairs, _ in train_pair_sets(cfg) for p in pairs]
    temps = list(dict.fromkeys(ns.temperature))
    # One T writes into --out itself (as before); several write --out/T5, --out/T10, ...
    targets = {temps[0]: ns.out} if len(temps) == 1 else {t: ns.out / f"T{t:g}" for t in temps}
    with distributed.session(cfg.device, cfg.dist_timeout) as world:
        paths = generate_label_sets(ns.teacher_ckpt, pairs, targets, pick_device(cfg.device), flips=ns.flips,
                                    amp=cfg.amp)
    if world.is_main:
        for t, path in zip(targets, paths):
            print(f"{len(pairs)} images labelled at T={t:g}{' (mean over flips)' if ns.flips else ''}: {path}")
    return 0


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"size {text!r}: write HxW, e.g. 448x448") from e
    return h, w


def cmd_eval(ns: argparse.Namespace) -> int:
    from trainer.evaluate import run_eval
    from trainer.loop import pick_device

    datas = ns.data or [Path("../shared/datasets/crackforest")]
    tag = "+".join(Path(d).name for d in datas)
    out = ns.out or Path("runs/eval") / f"{ns.model.stem}-{tag}-{ns.split}-{ns.mode}"
    r = run_eval(ns.model, datas if len(datas) > 1 else datas[0], ns.split, out, mode=ns.mode,
                 threshold=ns.threshold, pick_threshold=ns.pick_threshold, val_fraction=ns.val_fraction,
                 val_seed=ns.val_seed, max_images=ns.max_images, worst=ns.worst, figure_rows=ns.figure_rows,
                 device=pick_device(ns.device), threads=ns.threads, write_card=ns.write_card, size=ns.size,
                 crack_free=ns.crack_free)
    if "sets" in r:
        for name, s in r["sets"].items():
            print(f"{name}: {s['images']} images, F1(2px) {s['f1_tol']:.4f}  strict P {s['precision']:.4f} "
                  f"R {s['recall']:.4f} F1 {s['f1']:.4f} IoU {s['iou']:.4f}")
        print(f"{r['images']} images ({r['split']}, {r['mode']}), threshold {r['threshold']:.2f} "
              f"({r['threshold_source']}): mean over sets F1(2px) {r['mean_f1_tol']:.4f} IoU {r['mean_iou']:.4f}")
    else:
        m = r["metrics"]
        print(f"{r['images']} images ({r['split']}, {r['mode']}), threshold {r['threshold']:.2f} "
              f"({r['threshold_source']}): F1(2px) {m['tol2']['f1']:.4f}  strict P {m['strict']['precision']:.4f} "
              f"R {m['strict']['recall']:.4f} F1 {m['strict']['f1']:.4f} IoU {m['strict']['iou']:.4f}  "
              f"{r['ms_per_image']:.0f} ms/image")
        far = r["false_positives"]["far_from_crack"]
        print(f"false alarms: {far['rate']:.2e} of pixels >{far['margin_px']} px from any crack")
    if "synthetic_crack_free" in r["false_positives"]:
        s = r["false_positives"]["synthetic_crack_free"]
        print(f"crack-free synthetic road: {s['pixel_rate']:.2e} of pixels flagged, {s['frame_rate']:.1%} of "
              f"{s['frames']} frames reported")
    print(f"report: {out / 'report.json'}")
    return 0


def cmd_export(ns: argparse.Namespace) -> int:
    from trainer.export import export

    card = export(ns.checkpoint, ns.out, threshold=ns.threshold, name=ns.name, parity_size=ns.parity_size,
                  input_size=ns.input_size)
    print(f"{ns.out}: params {card['params']}, {card['gflops']} GFLOPs, threshold {card['threshold']:.2f}, "
          f"sha256 {card['sha256'][:12]}…; card {Path(ns.out).with_suffix('.json')}")
    return 0


def cmd_profile(ns: argparse.Namespace) -> int:
    import json

    from trainer.profile import profile

    if ns.train:
        return _profile_train(ns)
    if not ns.arch:
        raise ConfigError("profile: --arch is required (or --train for training speed)")
    try:
        r = profile(ns.arch, ns.size)
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from e
    print(json.dumps(r) if ns.json else f"{r['arch']}: {r['params']:,} parameters, "
          f"{r['gflops']} GFLOPs at {ns.size[0]}x{ns.size[1]} (2 x multiply-adds)")
    return 0


def _profile_train(ns: argparse.Namespace) -> int:
    import json

    from models.registry import list_models
    from trainer import distributed
    from trainer.loop import pick_device
    from trainer.profile import scaling_rows, train_speed

    archs = [ns.arch] if ns.arch else list_models()

    def show(row: dict[str, Any]) -> None:
        print(json.dumps(row) if ns.json else
              f"{row['arch']:<14} {row['precision']:<5} crop {row['crop']} batch {row['batch']} "
              f"x{row.get('procs', 1)} proc: {row['img_per_s']:6.2f} img/s ({row['s_per_step']:.2f} s/step, "
              f"{row['threads']} threads/proc, {row['device']}; {row['why']})", flush=True)

    if ns.procs and distributed.world_from_env().distributed:
        raise ConfigError("profile --procs launches torchrun itself: run it as one process")
    if ns.procs:
        for arch in archs:
            rows = scaling_rows(arch, ns.procs, ns.crop, ns.batch_size, ns.steps, tuple(ns.precision), ns.threads,
                                ns.device, on_row=show)
            base = {r["precision"]: r["img_per_s"] for r in rows if r["procs"] == min(ns.procs)}
            for r in rows:
                if r["procs"] != min(ns.procs) and base.get(r["precision"]):
                    print(json.dumps({"arch": arch, "precision": r["precision"], "procs": r["procs"],
                                      "speedup": round(r["img_per_s"] / base[r["precision"]], 2)})
                          if ns.json else f"{arch:<14} {r['precision']:<5} {r['procs']} procs: "
                          f"{r['img_per_s'] / base[r['precision']]:.2f}x the images/s of {min(ns.procs)}", flush=True)
        return 0
    with distributed.session(ns.device) as world:
        device = pick_device(ns.device)
        rows = []
        for arch in archs:
            try:
                rows += train_speed(arch, ns.crop, ns.batch_size, ns.steps, precisions=tuple(ns.precision),
                                    threads=ns.threads, device=device, on_row=show if world.is_main and not ns.rows_out
                                    else None)
            except KeyError as e:
                raise ConfigError(str(e.args[0])) from e
        if world.is_main and ns.rows_out:
            ns.rows_out.write_text(json.dumps(rows))
    return 0


def cmd_engine(ns: argparse.Namespace) -> int:
    from trainer.engine import build_engine

    out = build_engine(ns.onnx, ns.out, ns.precision, ns.size, ns.max_size, ns.workspace_mib, ns.device, ns.opt_level)
    print(f"engine: {out} (sidecar {out.name}.json; run it with crack-edge --model {out})")
    return 0


def cmd_ablation(ns: argparse.Namespace) -> int:
    from trainer import ablation

    cfg = ablation.load_settings(ns.config, **{k: getattr(ns, k) for k in ablation.AblationSettings.model_fields})
    cfg.work.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(cfg.work / "ablation.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s", "%H:%M:%S"))
    logging.getLogger().addHandler(handler)
    try:
        ablation.run(cfg)
        return exits.OK
    except TrainerError as e:
        log.error("event=failed exit=%d %s", e.exit_code, str(e).splitlines()[0])
        raise
    except (ablation.Interrupted, KeyboardInterrupt) as e:
        print(f"crack-train ablation: interrupted ({e}); run the same command again to resume", file=sys.stderr)
        return exits.INTERRUPTED
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


# What runs under torchrun; everything else reads or writes one file and runs as one process.
DISTRIBUTED_COMMANDS = ("teacher", "student", "labels", "profile")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="crack-train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("teacher", help="step 1: train the teacher on hard labels")
    _add_settings_flags(p, skip=("labels", "teacher", "kd", "temperatures", "t_real", "alpha"))
    p.set_defaults(func=cmd_teacher)

    p = sub.add_parser("labels", help="step 2: soft labels from a trained teacher")
    p.add_argument("--teacher-ckpt", dest="teacher_ckpt", type=Path, required=True, help="teacher checkpoint (best.pt)")
    p.add_argument("--temperature", "-T", type=float, nargs="+", default=[10.0],
                   help="softmax temperature T (published best: 10); several from one teacher pass go to OUT/T<t>")
    p.add_argument("--flips", action="store_true", help=(
        "average the teacher's logits over horizontal and vertical flips first (the born-again teacher)"))
    p.add_argument("--out", type=Path, required=True, help="folder for the labels and manifest.json")
    _add_settings_flags(p, skip=("labels", "teacher", "kd", "temperatures", "t_real", "alpha", "resume", "run_dir"))
    p.set_defaults(func=cmd_labels)

    p = sub.add_parser("student", help="step 3: distil a student from soft labels, or --plain without a teacher")
    p.add_argument("--plain", action="store_true", help="no teacher: hard labels only (the baseline)")
    _add_settings_flags(p)
    p.set_defaults(func=cmd_student)

    p = sub.add_parser("eval", help="judge a checkpoint or ONNX file on a split, as the daemon runs it")
    p.add_argument("--model", type=Path, required=True, help="NAME.onnx (with NAME.json) or a checkpoint .pt")
    p.add_argument("--data", type=Path, nargs="+", action="extend", help=(
        "dataset folder(s) (default ../shared/datasets/crackforest); with several, each is judged on its own "
        "split and --pick-threshold picks one threshold by the mean over sets of F1(2px)"))
    p.add_argument("--split", default="test", help="test, val (carved from train unless the set has one), train...")
    p.add_argument("--mode", choices=("resize", "native"), default="resize",
                   help="resize to the model's input size and back (daemon default) or native size padded to 4")
    p.add_argument("--size", type=_size, help="resize mode: HxW to resize to (default: the card's input size)")
    p.add_argument("--threshold", type=float, help="fixed threshold (default: the card's / the run's validation pick)")
    p.add_argument("--pick-threshold", action="store_true", help="choose the threshold with the best F1(2px); val only")
    p.add_argument("--write-card", action="store_true", help="record the figures (and a picked threshold) in the card")
    p.add_argument("--out", type=Path, help="report folder (default runs/eval/MODEL-DATA-SPLIT-MODE)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="as in training: share of train carved as val")
    p.add_argument("--val-seed", type=int, default=0, help="as in training: seed of the val carve")
    p.add_argument("--max-images", type=int, default=0, help="evaluate only the first N images (0 = all)")
    p.add_argument("--worst", type=int, default=4, help="overlay images written for the N worst images")
    p.add_argument("--figure-rows", type=int, default=4, help="rows of photo | ground truth | prediction in figure.png")
    p.add_argument("--crack-free", type=int, default=0, metavar="N",
                   help=("also judge N synthetic crack-free road frames with distractors, one kind per frame in "
                         "turn (false alarms; 0 = skip; a multiple of the nine kinds, e.g. 90, weighs them equally)"))
    p.add_argument("--device", default="auto", help="for checkpoints: auto, cpu, cuda")
    p.add_argument("--threads", type=int, help="CPU threads of the runtime")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="checkpoint -> ONNX (opset 17) + model card, parity-checked")
    p.add_argument("--checkpoint", type=Path, required=True, help="best.pt of a run")
    p.add_argument("--out", type=Path, required=True, help="NAME.onnx; the card goes to NAME.json")
    p.add_argument("--threshold", type=float, help="card threshold (default: the run's validation pick)")
    p.add_argument("--name", help="model name in the card (default: the file name)")
    p.add_argument("--parity-size", type=_size, help="HxW of the parity check input (default: the input size)")
    p.add_argument("--input-size", type=_size, help="HxW the card asks runtimes to resize to (default: 448x448)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("profile", help="parameters and GFLOPs (2 x multiply-adds) of a variant")
    p.add_argument("--arch", help="registered variant: student, teacher, student-mcld (--train: default all)")
    p.add_argument("--size", type=_size, default=(448, 448), help="input HxW (default 448x448)")
    p.add_argument("--train", action="store_true", help="training images/s per variant and precision instead")
    p.add_argument("--crop", type=int, default=224, help="--train: crop side (default 224)")
    p.add_argument("--batch-size", type=int, default=4, help="--train: crops per step (default 4)")
    p.add_argument("--steps", type=int, default=6, help="--train: timed steps per row (after 2 warm-up steps)")
    p.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"],
                   help="--train: precisions to time")
    p.add_argument("--threads", type=int, help="--train: torch CPU threads")
    p.add_argument("--device", default="auto", help="--train: auto, cpu, cuda")
    p.add_argument("--procs", type=int, nargs="+", metavar="N",
                   help="--train: also time N processes under torchrun (e.g. --procs 1 2; --threads is then per "
                        "process, default cores / N); --batch-size stays the global batch")
    p.add_argument("--rows-out", type=Path, help=argparse.SUPPRESS)  # where a rank 0 launched by --procs writes rows
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("engine", help="TensorRT engine + sidecar, as the daemon loads it (where TensorRT is installed)")
    p.add_argument("--onnx", type=Path, required=True, help="NAME.onnx with its card NAME.json (NAME-int8.onnx for int8)")
    p.add_argument("--out", type=Path, help="engine path (default NAME.PRECISION.engine; the sidecar goes beside it)")
    p.add_argument("--precision", choices=("fp16", "fp32", "bf16", "int8"),
                   help="default: fp16 for an fp32 model (fp32 on TensorRT 11), the model's own otherwise")
    p.add_argument("--size", type=_size, help="input HxW the engine is tuned for (default: the card's input size)")
    p.add_argument("--max-size", type=_size, help="largest HxW accepted, from 32x32 (default: only --size)")
    p.add_argument("--workspace-mib", type=int, default=1024, help="builder workspace (MiB)")
    p.add_argument("--device", type=int, default=0, help="CUDA device")
    p.add_argument("--opt-level", type=int, choices=range(6), help="builder optimisation level (TensorRT default 3)")
    p.set_defaults(func=cmd_engine)
    from trainer.ablation.plan import add_flags

    p = sub.add_parser("ablation", help="the distillation ablation in one budgeted, resumable command",
                       description="Teacher, soft labels, students, judged side by side (docs/ablation.md).")
    add_flags(p)
    p.set_defaults(func=cmd_ablation)
    # quantize owns its parser (trainer/quantize.py); listed here so --help shows it.
    sub.add_parser("quantize", add_help=False,
                   help="INT8 QDQ ONNX with an accuracy guard (crack-train quantize -h for its flags)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    import os

    # Before torch loads OpenMP: on a shared CPU, worker threads that spin while waiting for a core
    # made a 2-thread validation 7x slower than 1 thread (docs/training.md); passive waiting costs
    # next to nothing on an idle machine.  An explicit OMP_WAIT_POLICY is left alone.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["quantize"] and os.environ.get("WORLD_SIZE", "1") != "1":
        print("crack-train quantize: runs as one process; start it without torchrun", file=sys.stderr)
        return exits.CONFIG
    if argv[:1] == ["quantize"]:
        from trainer import quantize

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                            datefmt="%H:%M:%S")
        try:
            return quantize.main(argv[1:])
        except KeyboardInterrupt:
            print("crack-train quantize: interrupted", file=sys.stderr)
            return exits.INTERRUPTED
    ns = build_parser().parse_args(argv)
    rank, tag, quiet = "", "", False
    if "WORLD_SIZE" in os.environ:  # under torchrun: rank 0 logs, the others only warn
        from trainer.distributed import world_from_env

        try:
            world = world_from_env()
        except TrainerError as e:
            print(f"crack-train {ns.command}: {e}", file=sys.stderr)
            return e.exit_code
        if world.distributed:
            rank, tag, quiet = f" (rank {world.rank} of {world.size})", f" rank={world.rank}", not world.is_main
            if ns.command not in DISTRIBUTED_COMMANDS or (ns.command == "profile" and not ns.train):
                print(f"crack-train {ns.command}: runs as one process; start it without torchrun "
                      f"(WORLD_SIZE={world.size})", file=sys.stderr)
                return exits.CONFIG
    logging.basicConfig(level=logging.WARNING if quiet else logging.DEBUG if ns.verbose else logging.INFO,
                        format=f"%(asctime)s %(levelname)s %(name)s{tag} %(message)s",
                        datefmt="%H:%M:%S")
    code = _run(ns, rank)
    if rank and code:  # torchrun reports no exit status of its own ranks when it is stopped: each says its own
        print(f"crack-train {ns.command}{rank}: exit {code}", file=sys.stderr)
    return code


def _run(ns: argparse.Namespace, rank: str) -> int:
    from trainer.loop import Interrupted

    try:
        return ns.func(ns)
    except TrainerError as e:
        print(f"crack-train {ns.command}{rank}: {e}", file=sys.stderr)
        return e.exit_code
    except Interrupted:
        print(f"crack-train {ns.command}{rank}: interrupted; run the same command with --resume to continue",
              file=sys.stderr)
        return exits.INTERRUPTED
    except KeyboardInterrupt:  # outside a training loop (eval, labels, export, ...): nothing to resume
        print(f"crack-train {ns.command}: interrupted", file=sys.stderr)
        return exits.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
