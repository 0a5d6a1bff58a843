"""MCFF-L Net: the network definition (PyTorch, imported lazily) and the released models.

Importing this package does not import torch: the edge daemon only needs the released
ONNX files and their cards, found through :data:`MODELS_DIR`.
"""
from __future__ import annotations

from pathlib import Path

from models.registry import create_model, list_models, variant_defaults

MODELS_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = MODELS_DIR / "mcff-student.onnx"

__all__ = ["MODELS_DIR", "DEFAULT_MODEL", "create_model", "list_models", "variant_defaults"]
