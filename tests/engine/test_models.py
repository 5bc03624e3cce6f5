"""Model registry, architectures and loading local weights files."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
import torch

from engine.errors import ConfigError, MetaScopeError
from engine.models import build_model, list_architectures
from engine.models.weights import load_weights


def test_registry_lists_every_architecture_with_parameter_counts() -> None:
    infos = {a.name: a for a in list_architectures()}
    assert {"seed_cnn", "resnet18", "resnet34", "vgg_small"} <= set(infos)
    # the classic PCam/Kaggle network: ~3.4 M parameters at 96 px
    assert 3.3e6 < infos["seed_cnn"].params < 3.5e6
    assert 11.0e6 < infos["resnet18"].params < 11.3e6
    assert infos["resnet34"].params > infos["resnet18"].params
    assert all(a.description for a in infos.values())


def test_unknown_architecture_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown architecture 'densenet'.*seed_cnn.*resnet18"):
        build_model("densenet", 2)


@pytest.mark.parametrize(("arch", "size", "dim"), [("seed_cnn", 96, 64), ("vgg_small", 48, 256), ("resnet18", 64, 512)])
def test_models_give_logits_and_features(arch: str, size: int, dim: int) -> None:
    model = build_model(arch, 3, size).eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        assert model(x).shape == (2, 3)
        assert model.features(x).shape == (2, dim)
    assert model.feature_dim == dim


def test_too_small_input_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="at least 22 px"):
        build_model("seed_cnn", 2, 16)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        build_model("seed_cnn", 1)


def test_resnet_state_dict_uses_torchvision_names() -> None:
    keys = set(build_model("resnet18", 1000).state_dict())
    for k in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
              "layer4.1.bn2.weight", "fc.weight", "fc.bias"):
        assert k in keys


def test_imagenet_style_checkpoint_loads_and_head_is_replaced(tmp_path: Path) -> None:
    # a torchvision-style ImageNet checkpoint: 1000-class head, wrapped the Lightning way
    src = build_model("resnet18", 1000)
    with torch.no_grad():
        src.conv1.weight.fill_(0.123)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    model = build_model("resnet18", 2, weights=path)
    assert torch.allclose(model.conv1.weight, torch.full_like(model.conv1.weight, 0.123))
    assert model.fc.weight.shape == (2, 512)  # head kept at 2 classes, not loaded


def test_weights_that_do_not_fit_name_keys_and_shapes(tmp_path: Path) -> None:
    r34 = tmp_path / "r34.pt"
    torch.save(build_model("resnet34", 2).state_dict(), r34)
    with pytest.raises(ConfigError, match=r"does not fit ResNet: .*unexpected layer1\.2"):
        build_model("resnet18", 2, weights=r34)
    seed = tmp_path / "seed.pt"
    torch.save(build_model("seed_cnn", 2).state_dict(), seed)
    with pytest.raises(ConfigError, match="none of its .* tensors match"):
        build_model("resnet18", 2, weights=seed)
    other_size = tmp_path / "seed64.pt"
    torch.save({"model": build_model("seed_cnn", 2, 64).state_dict()}, other_size)
    with pytest.raises(ConfigError, match=r"shape mismatch for dense\.1\.weight \(256, 4608\) vs \(256, 12800\)"):
        build_model("seed_cnn", 2, 96, weights=other_size)


def test_weights_file_that_is_not_a_state_dict(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(MetaScopeError, match="cannot load weights file junk.pt"):
        load_weights(build_model("seed_cnn", 2), junk)
    with pytest.raises(ConfigError, match="not found"):
        load_weights(build_model("seed_cnn", 2), tmp_path / "missing.pt")
    # weights_only=True: a pickled object is refused, not executed
    torch.save({"obj": Fraction(1, 3)}, tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match="cannot load weights file evil.pt"):
        load_weights(build_model("seed_cnn", 2), tmp_path / "evil.pt")
