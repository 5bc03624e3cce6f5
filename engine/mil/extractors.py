"""Feature extractors a user has without training one: ``metascope mil extractor``.

- ``--builtin stats``: the colour / texture statistics extractor (:mod:`engine.mil.extractor`),
  16 features, no weights. Also shipped as ``resources/models/colour-texture-stats.onnx``.
- ``--builtin pcam-starter``: the penultimate layer (128 features) of the shipped PCam starter
  patch model ``resources/models/pcam-starter.onnx``, cut out of its ONNX graph.
- ``--backbone vgg16_bn|resnet18|resnet34 --weights FILE``: a torchvision-compatible ImageNet
  checkpoint the user has locally (BALNMP's published backbone is VGG16-BN), exported with its
  global-average-pooled last feature map (512 features) and ImageNet normalisation. Nothing is
  downloaded.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from engine import __version__
from engine.errors import ConfigError
from engine.modelpkg import ModelMetadata

BUILTINS = {
    "stats": "colour / texture statistics (16 features, no weights)",
    "pcam-starter": "penultimate layer of the shipped PCam starter patch model (128 features)",
}
BACKBONES = ("vgg16_bn", "resnet18", "resnet34")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: default tile side and resolution of backbone extractors (BALNMP: 200x, ~0.5 um/px patches)
BACKBONE_INPUT = 224
BACKBONE_MPP = 0.5


def _resources() -> Path:
    from engine.paths import resources_dir

    return resources_dir() / "models"


def _embed(model: object, meta: ModelMetadata, out: Path) -> Path:
    import onnx

    from engine.fileio import atomic_path
    from engine.modelpkg import METADATA_KEY

    for p in list(model.metadata_props):  # type: ignore[attr-defined]
        if p.key == METADATA_KEY:
            model.metadata_props.remove(p)  # type: ignore[attr-defined]
    entry = model.metadata_props.add()  # type: ignore[attr-defined]
    entry.key = METADATA_KEY
    entry.value = meta.to_json()
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
    return out


def starter_features(out: str | os.PathLike[str], starter: str | os.PathLike[str] | None = None) -> Path:
    """The PCam starter model's penultimate embedding as a ``feature_extractor`` package.

    Raises:
        ConfigError: the starter model is missing or its graph does not end in a linear classifier.
    """
    import onnx

    from engine.modelpkg import read_metadata

    src = Path(starter) if starter else _resources() / "pcam-starter.onnx"
    if not src.is_file():
        raise ConfigError(f"patch model not found: {src}")
    model = onnx.load(str(src))
    meta = read_metadata(src)
    graph = model.graph
    last = graph.node[-1]
    if last.op_type not in ("Gemm", "MatMul") or list(last.output) != [graph.output[0].name]:
        raise ConfigError(f"{src.name}: the graph does not end in a linear classifier; cannot cut out its features")
    feat_name = last.input[0]
    head = set(last.input[1:])
    graph.node.remove(last)
    for init in [i for i in graph.initializer if i.name in head]:
        graph.initializer.remove(init)
    dim = int(onnx.numpy_helper.to_array(next(i for i in onnx.load(str(src)).graph.initializer if i.name == last.input[1])).shape[1])
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info(feat_name, onnx.TensorProto.FLOAT, ["batch", dim]))
    onnx.checker.check_model(model)
    fmeta = ModelMetadata(
        name="PCam starter features",
        task="feature_extractor",
        class_names=(),
        input_size=meta.input_size,
        input_mpp=meta.input_mpp,
        mean=meta.mean,
        std=meta.std,
        arch=meta.arch,
        input_name=meta.input_name,
        output_name=feat_name,
        feature_dim=dim,
        extra={"source": src.name, "description": BUILTINS["pcam-starter"]},
        metascope_version=__version__,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    return _embed(model, fmeta, Path(out))


def write_builtin(name: str, out: str | os.PathLike[str], input_size: int | None = None, mpp: float | None = None) -> Path:
    """Write built-in extractor ``name`` (see :data:`BUILTINS`) to ``out``.

    Raises:
        ConfigError: unknown name.
    """
    out_p = Path(out)
    if out_p.suffix.lower() != ".onnx":
        raise ConfigError(f"the extractor file must end in .onnx, got {out_p.name}")
    if name == "stats":
        from engine.mil.extractor import build_stats_extractor

        return build_stats_extractor(out_p, input_size=input_size or 64, input_mpp=mpp if mpp is not None else 1.0)
    if name == "pcam-starter":
        if input_size is not None or mpp is not None:
            raise ConfigError("the pcam-starter extractor keeps its model's input size and resolution")
        return starter_features(out_p)
    raise ConfigError(f"unknown built-in extractor {name!r}; known: {', '.join(BUILTINS)}")


def _backbone(arch: str) -> object:
    if arch == "vgg16_bn":
        from engine.models.vgg16_bn import VGG16BNFeatures

        return VGG16BNFeatures()
    if arch in ("resnet18", "resnet34"):
        from engine.models import build_model

        return build_model(arch, 2, BACKBONE_INPUT)
    raise ConfigError(f"unknown backbone {arch!r}; known: {', '.join(BACKBONES)}")


def export_backbone(
    arch: str,
    weights: str | os.PathLike[str],
    out: str | os.PathLike[str],
    input_size: int = BACKBONE_INPUT,
    mpp: float = BACKBONE_MPP,
) -> Path:
    """Export a local ImageNet checkpoint of ``arch`` as a ``feature_extractor`` package.

    Raises:
        ConfigError: unknown backbone, a weights file that is missing or does not fit.
    """
    import warnings

    import onnxruntime as ort
    import torch

    from engine.fileio import atomic_path
    from engine.models.weights import load_weights

    out_p = Path(out)
    if out_p.suffix.lower() != ".onnx":
        raise ConfigError(f"the extractor file must end in .onnx, got {out_p.name}")
    net = _backbone(arch)
    info = load_weights(net, weights)

    class _Features(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m.features(x) if hasattr(self.m, "fc") else self.m(x)  # N x D

    module = _Features(net).eval()  # type: ignore[arg-type]
    x = torch.randn(2, 3, input_size, input_size)
    with atomic_path(out_p) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), str(tmp), input_names=["input"], output_names=["features"],
                              dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}}, opset_version=17, dynamo=False)
            ref = module(x).numpy()
        got = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"]).run(["features"], {"input": x.numpy()})[0]
        diff = float(np.abs(got - ref).max())
        import onnx

        meta = ModelMetadata(
            name=f"{arch} ImageNet features",
            task="feature_extractor",
            class_names=(),
            input_size=input_size,
            input_mpp=mpp,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            arch=arch,
            input_name="input",
            output_name="features",
            feature_dim=int(ref.shape[1]),
            extra={"weights": Path(info["path"]).name, "tensors_loaded": info["loaded"], "verify_max_abs_diff": diff},
            metascope_version=__version__,
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        _embed(onnx.load(str(tmp)), meta, tmp)
    return out_p
