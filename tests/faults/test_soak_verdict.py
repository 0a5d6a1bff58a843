"""tools/soak.py's verdict on its samples (the soak itself runs by `make soak`, not in CI)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "tools" / "soak.py"


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("soak_tool", SOAK)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rows(n=60, rss=lambda t: 150.0, fds=lambda t: 15, threads=lambda t: 10, masks=30):
    """Samples every 10 s for n samples (10 minutes by default)."""
    return [{"t_s": 5 + 10 * i, "rss_mb": rss(5 + 10 * i), "fds": fds(5 + 10 * i), "threads": threads(5 + 10 * i),
             "masks_window": masks, "source_restarts": i // 3, "viewer_connects": i, "reconnects": i // 3}
            for i in range(n)]


def test_flat_run_passes(soak):
    v = soak.verdict(rows(rss=lambda t: 150 + (0.3 if t % 20 else 0)), 5.0, warmup_s=60)
    assert v["result"] == "pass", v
    assert abs(v["rss_slope_mb_per_h_second_half"]) < 5


def test_rss_growth_over_the_second_half_fails(soak):
    # 10 MB/h, only after the first half: a leak that starts late is still caught.
    v = soak.verdict(rows(rss=lambda t: 150 + max(0.0, t - 300) * 10 / 3600), 5.0, warmup_s=60)
    assert v["result"] == "fail" and "RSS grows" in v["failures"][0]
    assert v["rss_slope_mb_per_h_second_half"] == pytest.approx(10, rel=0.05)


@pytest.mark.parametrize("what", ["fds", "threads"])
def test_growing_fds_or_threads_fail(soak, what):
    v = soak.verdict(rows(**{what: lambda t: 10 + int(t // 120)}), 5.0, warmup_s=60)
    assert v["result"] == "fail" and any(what in f for f in v["failures"]), v


def test_no_masks_at_the_end_fails(soak):
    v = soak.verdict(rows(masks=0), 5.0, warmup_s=60)
    assert any("no masks" in f for f in v["failures"])
