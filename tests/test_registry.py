"""Every registered variant, not just the student: a new size is one function in models/registry.py
and these tests cover it without being edited."""
from __future__ import annotations

import numpy as np
import pytest

from models import create_model, list_models, variant_defaults
from models.card import ModelCard, load_card

torch = pytest.importorskip("torch")

# The figures the reference gives (../shared/reference/mcff-l-net.md); a variant added later without
# a published figure is still covered by the other tests.
PUBLISHED_PARAMS = {"student": 1.18e6, "teacher": 32.9e6}


def test_the_three_published_variants_are_registered():
    assert {"student", "teacher", "student-mcld"} <= set(list_models())


@pytest.mark.parametrize("arch", list_models())
def test_variant_builds_and_keeps_the_frame_size(arch):
    from models.mcff import DeployHead

    torch.manual_seed(0)
    net = DeployHead(create_model(arch)).eval()
    d = variant_defaults(arch)
    h, w = 3 * d.size_multiple * 4, 5 * d.size_multiple * 4  # not square: catches a swapped H/W
    with torch.no_grad():
        out = net(torch.randn(1, 3, h, w))
    assert tuple(out.shape) == (1, 1, h, w)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("arch", sorted(PUBLISHED_PARAMS))
def test_parameter_count_matches_the_reference(arch):
    from models.mcff import count_params

    n = count_params(create_model(arch))
    assert abs(n - PUBLISHED_PARAMS[arch]) / PUBLISHED_PARAMS[arch] < 0.01, n


@pytest.mark.parametrize("arch", list_models())
def test_a_card_that_names_only_the_variant_takes_its_defaults(arch):
    card = ModelCard(name=f"mcff-{arch}", arch=arch)
    d = variant_defaults(arch)
    assert tuple(card.input_size) == d.input_size and card.size_multiple == d.size_multiple
    assert tuple(card.mean) == d.mean and tuple(card.std) == d.std
    assert card.channel_order == d.channel_order and card.threshold == d.threshold


@pytest.mark.parametrize("arch", list_models())
def test_exported_variant_runs_in_the_daemons_backend_like_torch(arch, tmp_path):
    pytest.importorskip("onnxruntime")
    from edge.backends.base import create_backend
    from models.mcff import DeployHead
    from trainer.export import export_untrained

    path = export_untrained(tmp_path / f"{arch}.onnx", arch=arch, input_size=(32, 48), seed=1)
    card = load_card(path)
    assert card.arch == arch
    backend = create_backend("onnxruntime", path, card, threads=1)
    backend.load()
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 48)).astype(np.float32)
    got = backend.infer(x)
    torch.manual_seed(1)
    with torch.no_grad():
        want = DeployHead(create_model(arch)).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(got).reshape(want.shape), want, atol=1e-4)
