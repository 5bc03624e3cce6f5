"""The MetaScope model package: one ``.onnx`` file carrying a JSON metadata entry.

The metadata lives in the ONNX ``metadata_props`` under the key :data:`METADATA_KEY`. For an
ONNX model trained elsewhere, a sidecar JSON next to it (``model.onnx.json`` or ``model.json``)
supplies the same fields.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from engine import __version__
from engine.errors import ModelPackageError

METADATA_KEY = "metascope"
FORMAT_VERSION = 1

TASKS = (
    "patch_classification",
    "feature_extractor",
    "mil_aggregator",
    # tabular / expression tasks (no image input: input_size, mpp, mean/std do not apply)
    "genomics_classifier",
    "expression_embedding",
    "expression_generator",
)
#: ``input_mpp`` bounds: the slide resolution range of :data:`engine.slides.open.MPP_RANGE`. A
#: value outside it is a typo (50 for 0.5) that would plan millions of tiles per slide.
INPUT_MPP_RANGE = (0.01, 100.0)
#: Tasks whose input is not an image patch.
TABULAR_TASKS = ("mil_aggregator", "genomics_classifier", "expression_embedding", "expression_generator")


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """What a consumer needs to run a model without code changes.

    Attributes:
        name: display name.
        task: one of :data:`TASKS`.
        class_names: output classes in output order (empty for a feature extractor).
        positive_class: index into ``class_names`` used for heatmaps (binary: usually 1).
        input_size: square input side in pixels (patch models), e.g. 96.
        input_mpp: microns per pixel the model was trained at, e.g. 0.972; ``None`` if unknown.
        mean, std: per-channel normalisation applied after scaling pixels to [0, 1].
        channel_order: ``"RGB"`` or ``"BGR"``.
        input_layout: ``"NCHW"`` or ``"NHWC"``.
        output: ``"logits"`` (softmax applied by the consumer) or ``"probabilities"``.
        arch: architecture name in the registry (informational for consumers).
        input_name, output_name: ONNX tensor names (first input/output when empty).
        feature_dim: embedding size (feature extractors, MIL aggregators).
        feature_extractor: for MIL aggregators, name + sha256 of the extractor it needs.
        training_data: free-form summary (dataset, counts, mpp, ...).
        metrics: validation metrics (auc, accuracy, ...).
        extra: anything else (clinical feature spec for MIL, tile stride, ...).
        metascope_version: version that wrote the package.
        format_version: package format version.
        created: ISO timestamp.
    """

    name: str
    task: str
    class_names: tuple[str, ...]
    positive_class: int = 1
    input_size: int = 96
    input_mpp: float | None = None
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: str = "RGB"
    input_layout: str = "NCHW"
    output: str = "logits"
    arch: str = ""
    input_name: str = ""
    output_name: str = ""
    feature_dim: int | None = None
    feature_extractor: dict[str, Any] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    metascope_version: str = __version__
    format_version: int = FORMAT_VERSION
    created: str = ""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ModelPackageError(f"unknown model task {self.task!r} (expected one of {', '.join(TASKS)})")
        if self.task not in ("feature_extractor", "expression_embedding", "expression_generator"):
            if len(self.class_names) < 2:
                raise ModelPackageError("model metadata needs at least two class names")
            if not 0 <= self.positive_class < len(self.class_names):
                raise ModelPackageError(
                    f"positive_class {self.positive_class} is not an index into {len(self.class_names)} classes"
                )
        if self.task not in TABULAR_TASKS and self.input_size < 8:
            raise ModelPackageError(f"input_size {self.input_size} is too small")
        if self.input_mpp is not None and not (
            isinstance(self.input_mpp, (int, float)) and math.isfinite(self.input_mpp)
            and INPUT_MPP_RANGE[0] <= self.input_mpp <= INPUT_MPP_RANGE[1]
        ):
            raise ModelPackageError(
                f"input_mpp must be between {INPUT_MPP_RANGE[0]} and {INPUT_MPP_RANGE[1]} microns per pixel, "
                f"got {self.input_mpp}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ModelPackageError("mean and std need three values each, std > 0")
        if self.channel_order not in ("RGB", "BGR"):
            raise ModelPackageError(f"channel_order must be RGB or BGR, got {self.channel_order!r}")
        if self.input_layout not in ("NCHW", "NHWC"):
            raise ModelPackageError(f"input_layout must be NCHW or NHWC, got {self.input_layout!r}")
        if self.output not in ("logits", "probabilities"):
            raise ModelPackageError(f"output must be logits or probabilities, got {self.output!r}")

    @property
    def positive_class_name(self) -> str:
        return self.class_names[self.positive_class]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMetadata:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        try:
            kwargs["class_names"] = tuple(str(c) for c in kwargs.get("class_names", ()))
            if "mean" in kwargs:
                kwargs["mean"] = tuple(float(x) for x in kwargs["mean"])
            if "std" in kwargs:
                kwargs["std"] = tuple(float(x) for x in kwargs["std"])
            if kwargs.get("input_mpp") is not None:
                kwargs["input_mpp"] = float(kwargs["input_mpp"])
            if "input_size" in kwargs:
                kwargs["input_size"] = int(kwargs["input_size"])
            if "positive_class" in kwargs:
                kwargs["positive_class"] = int(kwargs["positive_class"])
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ModelPackageError(f"invalid model metadata: {exc}") from exc


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sidecar_paths(onnx_path: str | os.PathLike[str]) -> list[Path]:
    p = Path(onnx_path)
    return [p.with_name(p.name + ".json"), p.with_suffix(".json")]


# -- reading the metadata without parsing the model -----------------------------------------------
# ModelProto fields (onnx.proto): graph = 7, metadata_props = 14; GraphProto: input = 11;
# StringStringEntryProto: key = 1, value = 2.
_MODEL_GRAPH, _MODEL_METADATA, _GRAPH_INPUT = 7, 14, 11


class _NotProtobuf(ValueError):
    pass


def _varint(fh: Any) -> int:
    result = shift = 0
    while True:
        b = fh.read(1)
        if not b:
            raise _NotProtobuf("truncated")
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise _NotProtobuf("bad varint")


def _fields(fh: Any, end: int) -> Iterator[tuple[int, int, int]]:
    """``(field number, wire type, length or value)`` of one protobuf message's fields up to
    byte ``end``. Length-delimited payloads (the weights) are skipped by seeking, never read,
    unless the consumer reads them (the position is reset after each)."""
    while fh.tell() < end:
        key = _varint(fh)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _NotProtobuf("field 0")
        if wire == 0:
            yield number, wire, _varint(fh)
        elif wire in (1, 5):
            fh.seek(8 if wire == 1 else 4, io.SEEK_CUR)
        elif wire == 2:
            n = _varint(fh)
            start = fh.tell()
            if start + n > end:
                raise _NotProtobuf("field runs past the end")
            yield number, wire, n
            fh.seek(start + n)
        else:
            raise _NotProtobuf(f"wire type {wire}")
    if fh.tell() != end:
        raise _NotProtobuf("field runs past the end")


def _scan_model(fh: Any, size: int) -> tuple[dict[str, str], bool]:
    """``(metadata_props, whether the graph has inputs)`` of a serialised ONNX ModelProto,
    reading only field headers and the metadata strings (not the weights)."""
    props: dict[str, str] = {}
    has_inputs = False
    for number, wire, n in _fields(fh, size):
        if wire != 2:
            continue
        start = fh.tell()
        if number == _MODEL_GRAPH:
            has_inputs = has_inputs or any(f == _GRAPH_INPUT and w == 2 for f, w, _ in _fields(fh, start + n))
        elif number == _MODEL_METADATA:
            entry: dict[int, str] = {}
            for f, w, m in _fields(fh, start + n):
                if w == 2 and f in (1, 2):
                    entry[f] = fh.read(m).decode("utf-8", errors="replace")
            props[entry.get(1, "")] = entry.get(2, "")
    return props, has_inputs


def model_properties(source: str | os.PathLike[str] | bytes) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (path) or its bytes, without parsing the graph.

    Raises:
        ModelPackageError: missing file, or not an ONNX model (not a ModelProto, no graph inputs).
    """
    name = "model" if isinstance(source, bytes) else Path(source).name
    try:
        if isinstance(source, bytes):
            props, has_inputs = _scan_model(io.BytesIO(source), len(source))
        else:
            with open(source, "rb") as fh:
                props, has_inputs = _scan_model(fh, os.fstat(fh.fileno()).st_size)
    except FileNotFoundError:
        raise ModelPackageError(f"model file not found: {source}") from None
    except OSError as exc:
        raise ModelPackageError(f"cannot read model {source}: {exc.strerror or exc}") from exc
    except _NotProtobuf as exc:
        raise ModelPackageError(f"{name} is not an ONNX model ({exc})") from None
    if not has_inputs:
        raise ModelPackageError(f"{name} is not an ONNX model (no graph inputs)")
    return props


def read_metadata(onnx_path: str | os.PathLike[str], data: bytes | None = None) -> ModelMetadata:
    """Read the metadata of a model package (embedded, else a sidecar JSON).

    Only the ONNX field headers and the metadata strings are read (:func:`model_properties`),
    not the weights, so this is cheap for any model size.

    Args:
        onnx_path: the ``.onnx`` file (names messages, locates sidecars).
        data: the file's bytes when the caller already read them (then the file is not read again).

    Raises:
        ModelPackageError: missing file, not an ONNX model, or no MetaScope metadata.
    """
    p = Path(onnx_path)
    if data is None and not p.is_file():
        raise ModelPackageError(f"model file not found: {p}")
    try:
        props = model_properties(p if data is None else data)
    except ModelPackageError as exc:
        raise ModelPackageError(str(exc).replace("model is not", f"{p.name} is not", 1)) from None
    raw: dict[str, Any] | None = None
    if METADATA_KEY in props:
        try:
            raw = json.loads(props[METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise ModelPackageError(f"{p.name}: MetaScope metadata is not valid JSON") from exc
    else:
        for side in sidecar_paths(p):
            if side.is_file():
                try:
                    raw = json.loads(side.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError) as exc:
                    raise ModelPackageError(f"sidecar {side.name} is not valid JSON") from exc
                break
    if raw is None:
        raise ModelPackageError(
            f"{p.name} is not a MetaScope model: no '{METADATA_KEY}' metadata and no sidecar JSON "
            f"({sidecar_paths(p)[0].name})"
        )
    if not isinstance(raw, dict):
        raise ModelPackageError(f"{p.name}: MetaScope metadata must be a JSON object")
    return ModelMetadata.from_dict(raw)


# -- what a shipped package may say ---------------------------------------------------------------

_WINDOWS_ABS = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")


def is_absolute_path(value: str) -> bool:
    """Whether a string is an absolute file path on POSIX or Windows (``/x``, ``C:\\x``, ``\\\\host``)."""
    return value.startswith("/") or bool(_WINDOWS_ABS.match(value))


def _pure(value: str) -> Any:
    from pathlib import PurePosixPath, PureWindowsPath

    return PurePosixPath(value) if value.startswith("/") else PureWindowsPath(value)


def portable_path(value: str, root: str | os.PathLike[str] | None = None) -> str:
    """An absolute path made safe to ship: relative to ``root`` (named by its folder name) when
    under it, else the file name alone. Other strings are returned unchanged.

    ``portable_path("/data/pcam/train/a.png", "/data/pcam/train") == "train/a.png"``.
    """
    if not is_absolute_path(value):
        return value
    path = _pure(value)
    if root is not None and is_absolute_path(str(root)):
        base = _pure(str(root))
        if type(base) is type(path):
            try:
                rel = path.relative_to(base)
            except ValueError:
                pass  # not under the dataset root: only the file name is kept (below)
            else:
                return str(type(path)(base.name, rel)) if str(rel) != "." else base.name
    return path.name or str(value).strip("/\\")


def portable(obj: Any, root: str | os.PathLike[str] | None = None) -> Any:
    """``obj`` (JSON-like) with every absolute path string replaced by :func:`portable_path`."""
    if isinstance(obj, str):
        return portable_path(obj, root)
    if isinstance(obj, dict):
        return {k: portable(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v, root) for v in obj]
    return obj


def absolute_paths(obj: Any, where: str = "") -> list[str]:
    """``"key.path: value"`` of every absolute path string inside JSON-like ``obj``."""
    if isinstance(obj, str):
        return [f"{where}: {obj}"] if is_absolute_path(obj) else []
    if isinstance(obj, dict):
        return [hit for k, v in obj.items() for hit in absolute_paths(v, f"{where}.{k}" if where else str(k))]
    if isinstance(obj, (list, tuple)):
        return [hit for i, v in enumerate(obj) for hit in absolute_paths(v, f"{where}[{i}]")]
    return []


#: ``metrics["split"]`` of metrics measured on the split that picked the best epoch / fold
SELECTION_SPLIT = "validation used for model selection (optimistic; not a test result)"


def labelled_metrics(values: dict[str, Any], split: str, selection: bool) -> dict[str, Any]:
    """Package metrics that say what they were measured on.

    Args:
        values: the numbers (``auc``, ``accuracy``, ...).
        split: what they were measured on, e.g. :data:`SELECTION_SPLIT` or ``"test"``.
        selection: whether that split also chose the model (then the numbers sit under
            ``"selection"``, else under ``"test"``), so no consumer mistakes a model-selection
            AUC for a held-out result.

    Returns:
        ``{"selection" | "test": values, "split": split}``.
    """
    return {"selection" if selection else "test": dict(values), "split": split}


def headline_metrics(metrics: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(what the numbers are, flat numbers)`` of a package's metrics for display: held-out
    test numbers first, then model-selection numbers; an older flat dict is ``("", metrics)``."""
    for key, label in (("test", "test"), ("selection", "validation (model selection)")):
        if isinstance(metrics.get(key), dict):
            return str(metrics.get("split") or label), dict(metrics[key])
    return "", dict(metrics)


def embed_metadata(model: Any, meta: ModelMetadata) -> None:
    """Put ``meta`` into a loaded ``onnx.ModelProto`` in place, replacing any earlier entry.

    Absolute paths (of the machine that built the package) are never written: any left in
    ``meta`` become file names (:func:`portable`); exporters make them relative to the data
    root first where that says more.
    """
    kept = [prop for prop in model.metadata_props if prop.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(portable(meta.to_dict()), sort_keys=True)


def write_metadata(onnx_path: str | os.PathLike[str], meta: ModelMetadata, out_path: str | os.PathLike[str] | None = None) -> Path:
    """Embed ``meta`` into the ONNX file (atomically), replacing any earlier entry."""
    import onnx

    from engine.fileio import atomic_path

    src = Path(onnx_path)
    dst = Path(out_path) if out_path is not None else src
    model = onnx.load(str(src))
    embed_metadata(model, meta)
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return dst
