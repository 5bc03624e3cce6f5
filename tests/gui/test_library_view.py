"""Model library view: import (with and without a sidecar), rename, delete, export, model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtWidgets import QFileDialog, QInputDialog, QMessageBox  # noqa: E402

from engine.library import ModelLibrary  # noqa: E402
from engine.modelpkg import ModelMetadata, write_metadata  # noqa: E402
from gui.views.models_view import ModelsView  # noqa: E402


def _plain_onnx(path: Path, size: int = 16) -> Path:
    """A tiny ONNX classifier without MetaScope metadata: N x 3 x S x S -> N x 2 logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.array([[1.0, -1.0], [0.5, -0.5], [-1.0, 1.0]], np.float32), "w")
    b = numpy_helper.from_array(np.zeros(2, np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _meta(name: str = "Tiny tumour model") -> ModelMetadata:
    return ModelMetadata(
        name=name,
        task="patch_classification",
        class_names=("normal", "tumour"),
        input_size=16,
        input_mpp=0.972,
        arch="tiny",
        metrics={"auc": 0.912, "accuracy": 0.861},
        training_data={"name": "toy patches", "n_train": 120, "format": "folder"},
        created="2025-01-02T03:04:05",
    )


@pytest.fixture
def packaged_model(tmp_path: Path) -> Path:
    src = _plain_onnx(tmp_path / "plain.onnx")
    out = tmp_path / "tiny.onnx"
    write_metadata(src, _meta(), out_path=out)
    (tmp_path / "tiny.md").write_text("# Tiny tumour model\n\nTrained on **toy patches** for tests.\n")
    return out


def test_library_lists_imported_model_with_metadata_and_card(qtbot, packaged_model: Path) -> None:
    view = ModelsView()
    qtbot.addWidget(view)
    assert view.table.rowCount() == 0
    with qtbot.waitSignal(view.library_changed, timeout=30_000):
        entry = view.import_model(packaged_model)
    assert entry is not None
    assert view.table.rowCount() == 1
    row = [view.table.item(0, c).text() for c in range(view.table.columnCount())]
    assert row[0] == "Tiny tumour model"
    assert row[2] == "normal, tumour"
    assert row[3] == "16×16 px @ 0.972 µm/px"
    assert "AUC 0.912" in row[4] and "accuracy 0.861" in row[4]
    assert "toy patches" in row[5] and "120" in row[5]
    assert row[6] == "2025-01-02 03:04"
    assert row[7] == entry.sha256[:12]
    card = view.card.toPlainText()
    assert entry.sha256 in card
    assert "Trained on toy patches for tests." in card  # the .md card next to the model
    # the library (which the slide viewer lists) sees it at once
    assert [e.name for e in ModelLibrary().entries()] == ["Tiny tumour model"]


def test_import_plain_onnx_asks_for_sidecar(qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _plain_onnx(tmp_path / "elsewhere.onnx")
    side = tmp_path / "meta" / "description.json"
    side.parent.mkdir()
    side.write_text(json.dumps(_meta("Outside model").to_dict()))
    asked: list[str] = []

    def fake_open(parent, caption, directory="", filt=""):  # noqa: ANN001
        asked.append(caption)
        return str(side), "JSON (*.json)"

    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(fake_open))
    view = ModelsView()
    qtbot.addWidget(view)
    entry = view.import_model(plain)
    assert entry is not None and entry.name == "Outside model"
    assert asked and "no MetaScope metadata" in asked[0]
    assert not (tmp_path / "elsewhere.onnx.json").exists()  # the user's folder is not written to
    assert view.table.item(0, 0).text() == "Outside model"


def test_import_garbage_shows_error_not_traceback(qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx file at all")
    warnings: list[str] = []
    monkeypatch.setattr(QMessageBox, "warning", staticmethod(lambda _p, _t, msg, *a: warnings.append(msg)))
    view = ModelsView()
    qtbot.addWidget(view)
    assert view.import_model(bad) is None
    assert warnings and "broken.onnx is not an ONNX model" in warnings[0]
    assert view.table.rowCount() == 0


def test_rename_delete_export(qtbot, packaged_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    view = ModelsView()
    qtbot.addWidget(view)
    view.import_model(packaged_model)
    view.table.selectRow(0)

    monkeypatch.setattr(QInputDialog, "getText", staticmethod(lambda *a, **k: ("Lymph node v2", True)))
    with qtbot.waitSignal(view.library_changed, timeout=30_000):
        view.rename_button.click()
    assert view.table.item(0, 0).text() == "Lymph node v2"
    entry = view.selected_entry()
    assert entry is not None and entry.path.name == "Lymph-node-v2.onnx"
    assert entry.path.with_suffix(".md").is_file()  # the card follows the model
    ModelLibrary().verify(entry.path)  # sha256 index updated

    dest = tmp_path / "out" / "shared.onnx"
    dest.parent.mkdir()
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(dest), "")))
    view.export_button.click()
    assert dest.read_bytes() == entry.path.read_bytes()

    # delete asks first: "Cancel" keeps the model
    monkeypatch.setattr(QMessageBox, "question", staticmethod(lambda *a, **k: QMessageBox.StandardButton.Cancel))
    view.delete_button.click()
    assert view.table.rowCount() == 1
    monkeypatch.setattr(QMessageBox, "question", staticmethod(lambda *a, **k: QMessageBox.StandardButton.Yes))
    with qtbot.waitSignal(view.library_changed, timeout=30_000):
        view.delete_button.click()
    assert view.table.rowCount() == 0
    assert ModelLibrary().entries() == []
    assert not entry.path.exists() and not entry.path.with_suffix(".md").exists()
    assert not view.delete_button.isEnabled()


def test_rename_to_existing_name_is_refused(qtbot, packaged_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    view = ModelsView()
    qtbot.addWidget(view)
    first = view.import_model(packaged_model)
    second = view.import_model(packaged_model)
    assert first is not None and second is not None and first.path != second.path
    warnings: list[str] = []
    monkeypatch.setattr(QMessageBox, "warning", staticmethod(lambda _p, _t, msg, *a: warnings.append(msg)))
    assert view.rename_model(second, first.path.stem) is None
    assert warnings and "already exists" in warnings[0]
    assert view.rename_model(second, "   ") is None
    assert "empty" in warnings[-1]
