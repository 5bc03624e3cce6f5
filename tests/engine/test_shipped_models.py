"""What a shipped model package may say: no absolute paths, metrics labelled with their split."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from engine.modelpkg import (
    METADATA_KEY,
    SELECTION_SPLIT,
    ModelMetadata,
    absolute_paths,
    embed_metadata,
    headline_metrics,
    labelled_metrics,
    portable,
    portable_path,
)

RESOURCES = Path(__file__).resolve().parents[2] / "resources"
SHIPPED = sorted(RESOURCES.rglob("*.onnx"))


def test_resources_ship_at_least_one_model() -> None:
    assert SHIPPED, f"no .onnx under {RESOURCES}"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_model_metadata_has_no_absolute_paths_and_labelled_metrics(path: Path) -> None:
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    for key, value in props.items():
        doc = json.loads(value) if key == METADATA_KEY else value
        assert absolute_paths(doc, key) == [], f"{path.name} records paths of the machine that built it"
    metrics = json.loads(props[METADATA_KEY]).get("metrics") or {}
    if metrics:
        # a number measured on the split that chose the model must say so
        assert "split" in metrics and ("selection" in metrics or "test" in metrics), metrics
        assert "auc" not in metrics


def test_portable_paths_are_relative_to_the_data_root_or_file_names() -> None:
    assert portable_path("/data/pcam/train/a/b.png", "/data/pcam/train") == "train/a/b.png"
    assert portable_path("/data/pcam/train", "/data/pcam/train") == "train"
    assert portable_path("/home/me/runs/best.pt", "/data") == "best.pt"
    assert portable_path(r"C:\Users\me\slides\s1.svs") == "s1.svs"
    assert portable_path(r"\\server\share\x.csv") == "x.csv"
    assert portable_path("relative/x.png") == "relative/x.png"
    doc = portable({"a": ["/x/y.csv", "keep", 3], "b": {"c": r"D:\z\w.json"}})
    assert doc == {"a": ["y.csv", "keep", 3], "b": {"c": "w.json"}} and absolute_paths(doc) == []


def test_embedding_never_writes_absolute_paths() -> None:
    meta = ModelMetadata(
        name="m", task="patch_classification", class_names=("a", "b"),
        training_data={"path": "/home/me/data"}, extra={"source": r"C:\runs\best.pt"},
        metrics=labelled_metrics({"auc": 0.9}, SELECTION_SPLIT, selection=True),
    )
    proto = onnx.ModelProto()
    embed_metadata(proto, meta)
    doc = json.loads(proto.metadata_props[0].value)
    assert absolute_paths(doc) == [] and doc["training_data"]["path"] == "data"
    assert headline_metrics(doc["metrics"]) == (SELECTION_SPLIT, {"auc": 0.9})
    assert headline_metrics({"test": {"auc": 0.8}, "split": "test"}) == ("test", {"auc": 0.8})
    assert headline_metrics({"auc": 0.7}) == ("", {"auc": 0.7})
