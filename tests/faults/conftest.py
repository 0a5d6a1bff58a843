"""Fixtures of the fault tests: the figures file and small real clips."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from faultkit import Figures


@pytest.fixture(scope="session")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Figures:
    """``figures.record(case, **measured)``; the file is named by CRACK_FAULT_FIGURES if set."""
    env = os.environ.get("CRACK_FAULT_FIGURES")
    return Figures(Path(env) if env else tmp_path_factory.getbasetemp() / "fault-figures.json")
