"""The compact PCam ResNets (``pcam_resnet_s`` / ``pcam_resnet_m``): registry, shapes, export-friendly head."""

from __future__ import annotations

import pytest
import torch

from engine.errors import ConfigError
from engine.models import build_model, list_architectures
from engine.train.config import TrainConfig


def test_registered_with_parameter_counts_and_trainable_by_name() -> None:
    infos = {a.name: a for a in list_architectures()}
    assert 0.25e6 < infos["pcam_resnet_s"].params < 0.4e6
    assert infos["pcam_resnet_s"].params < infos["pcam_resnet_m"].params < 1e6
    assert infos["pcam_resnet_s"].dropout and infos["pcam_resnet_s"].min_input_size == 32
    assert TrainConfig(data="x", arch="pcam_resnet_s").arch == "pcam_resnet_s"


@pytest.mark.parametrize(("arch", "size", "dim"), [("pcam_resnet_s", 96, 128), ("pcam_resnet_m", 48, 192)])
def test_logits_features_and_any_input_size(arch: str, size: int, dim: int) -> None:
    torch.manual_seed(0)
    model = build_model(arch, 3, size, dropout=0.1).eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        assert model(x).shape == (2, 3)
        feats = model.features(x)
    assert feats.shape == (2, dim) and model.feature_dim == dim
    # the head is one linear layer on the pooled features (the MIL extractor cuts it off)
    assert torch.allclose(model.classifier(feats), model(x), atol=1e-5)


def test_residual_blocks_start_as_identity_and_a_step_learns() -> None:
    torch.manual_seed(0)
    model = build_model("pcam_resnet_s", 2, 32)
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0.0 for b in model.body)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.rand(8, 3, 32, 32), torch.tensor([0, 1] * 4)
    first = None
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first


def test_too_small_input_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="at least 32 px"):
        build_model("pcam_resnet_s", 2, 24)
