"""``crack-train``: one sub-command per step, each a thin layer over a function with explicit paths.

    crack-train teacher   step 1: train the teacher on hard labels
    crack-train labels    step 2: the teacher's soft labels at temperature T, with a manifest
    crack-train student   step 3: distil a student (or --plain: train one without a teacher)
    crack-train eval      judge a checkpoint or ONNX file on a split; --pick-threshold on val
    crack-train export    a checkpoint's deploy output to ONNX + model card
    crack-train profile   parameters and GFLOPs of a registered variant
    crack-train engine    a TensorRT engine (FP16 / INT8) where TensorRT is installed

Exit status: 0 done, 2 usage, 65 bad data, 66 missing input, 69 tool unavailable, 78 bad config,
130 interrupted (resume with the same command and --resume).
"""
from __future__ import annotations

import argparse
import logging
import sys
import typing
from pathlib import Path
from typing import Any, Sequence

from trainer.config import TrainSettings, load_settings
from trainer.errors import TrainerError

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


def _settings(ns: argparse.Namespace, **forced: Any) -> TrainSettings:
    flags = {k: getattr(ns, k, None) for k in TrainSettings.model_fields}
    flags.update(forced)
    return load_settings(ns.config, **flags)


def cmd_teacher(ns: argparse.Namespace) -> int:
    from trainer.teacher import train_teacher

    cfg = _settings(ns, arch=ns.arch or "teacher")
    r = train_teacher(cfg)
    print(f"best epoch {r.best_epoch}: val F1(2px) {r.best_val_f1_tol:.4f}; checkpoint {r.run_dir / 'best.pt'}")
    return 0


def cmd_student(ns: argparse.Namespace) -> int:
    from trainer.student import train_distilled_student, train_plain_student

    cfg = _settings(ns)
    r = train_plain_student(cfg) if ns.plain else train_distilled_student(cfg)
    print(f"best epoch {r.best_epoch}: val F1(2px) {r.best_val_f1_tol:.4f}; checkpoint {r.run_dir / 'best.pt'}")
    return 0


def cmd_labels(ns: argparse.Namespace) -> int:
    from trainer.labels import generate_labels
    from trainer.loop import pick_device
    from trainer.sets import train_pair_sets

    cfg = _settings(ns)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    pairs = [p for pairs, _ in train_pair_sets(cfg) for p in pairs]
    path = generate_labels(ns.teacher_ckpt, pairs, ns.temperature, ns.out, pick_device(cfg.device))
    print(f"{len(pairs)} images labelled at T={ns.temperature:g}: {path}")
    return 0


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
    p.add_argument("--temperature", "-T", type=float, default=10.0, help="softmax temperature T (published best: 10)")
    p.add_argument("--out", type=Path, required=True, help="folder for the labels and manifest.json")
    _add_settings_flags(p, skip=("labels", "teacher", "kd", "temperatures", "t_real", "alpha", "resume", "run_dir"))
    p.set_defaults(func=cmd_labels)

    p = sub.add_parser("student", help="step 3: distil a student from soft labels, or --plain without a teacher")
    p.add_argument("--plain", action="store_true", help="no teacher: hard labels only (the baseline)")
    _add_settings_flags(p)
    p.set_defaults(func=cmd_student)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", datefmt="%H:%M:%S")
    from trainer.loop import Interrupted

    try:
        return ns.func(ns)
    except TrainerError as e:
        log.error("event=error status=%d %s", e.exit_code, e)
        print(f"crack-train {ns.command}: {e}", file=sys.stderr)
        return e.exit_code
    except Interrupted:
        print(f"crack-train {ns.command}: interrupted; run the same command with --resume to continue",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
