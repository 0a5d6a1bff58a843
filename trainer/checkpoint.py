"""The one reader of crack-train checkpoints (``best.pt``, ``last.pt``): one function, one error class.

A truncated, foreign or key-less file is a :class:`CheckpointError` (exit 65, naming the file and
the setting), never a pickle traceback; a missing one is MissingInput (66).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.errors import DataError, MissingInput


class CheckpointError(DataError):
    """A file that is not a crack-train checkpoint (or lacks what the caller needs)."""


def read_checkpoint(path: str | Path, what: str = "checkpoint", device: str = "cpu",
                    needs: tuple[str, ...] = ("model", "meta")) -> dict[str, Any]:
    """The checkpoint's dict, with ``needs`` keys present; ``what`` names the setting in messages."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{what}: {path}: checkpoint not found")
    try:
        ck = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # truncated, not a pickle, a foreign format
        raise CheckpointError(f"{what}: {path}: not a crack-train checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ck, dict) or any(k not in ck for k in needs):
        missing = [k for k in needs if not isinstance(ck, dict) or k not in ck]
        raise CheckpointError(f"{what}: {path}: not a crack-train checkpoint (no {', '.join(missing)})")
    return ck
