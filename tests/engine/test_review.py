"""Patch review (engine.infer.review): rows from an evaluation, error ordering, filters, export, pixels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from engine.errors import DatasetError
from engine.infer.review import (
    EXPORT_COLUMNS,
    PatchImages,
    ReviewRow,
    confidence,
    export_csv,
    filter_rows,
    load_review,
    sort_rows,
)
from tests.fixtures.datasets import make_folder_dataset, make_pcam_h5


def write_evaluation(folder: Path, rows: list[tuple], threshold: float = 0.5, *, source: bool = True,
                     metrics: dict | None = None) -> Path:
    """A hand-made ``metascope evaluate`` output: rows are (id, label, p_tumor, source, index)."""
    folder.mkdir(parents=True, exist_ok=True)
    head = ["id", "label", "p_normal", "p_tumor", "predicted"] + (["source", "index"] if source else [])
    with (folder / "predictions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        for pid, label, p, src, idx in rows:
            extra = [src, idx] if source else []
            w.writerow([pid, label, f"{1 - p:.6f}", f"{p:.6f}", "tumor" if p > 0.5 else "normal", *extra])
    m = {"class_names": ["normal", "tumor"], "positive_class": "tumor", "threshold": threshold}
    (folder / "metrics.json").write_text(json.dumps(m | (metrics or {})))
    return folder


ROWS = [
    ("tp_sure", "tumor", 0.97, "", 0),
    ("fp_sure", "normal", 0.95, "", 1),
    ("fn_mild", "tumor", 0.30, "", 2),
    ("tn_near", "normal", 0.45, "", 3),
    ("fp_mild", "normal", 0.60, "", 4),
    ("tn_sure", "normal", 0.01, "", 5),
]


def test_rows_kinds_and_error_order(tmp_path: Path) -> None:
    rev = load_review(write_evaluation(tmp_path / "ev", ROWS))
    assert rev.positive_class == "tumor" and rev.threshold == 0.5
    assert [r.id for r in rev.rows] == ["fp_sure", "fn_mild", "fp_mild", "tn_near", "tp_sure", "tn_sure"]
    kinds = {r.id: r.kind for r in rev.rows}
    assert kinds == {"tp_sure": "TP", "fp_sure": "FP", "fn_mild": "FN", "tn_near": "TN", "fp_mild": "FP", "tn_sure": "TN"}
    assert rev.counts() == {"FP": 2, "FN": 1, "TP": 1, "TN": 2}
    fp = rev.rows[0]
    assert fp.predicted == "tumor" and fp.truth == "normal" and fp.confidence == pytest.approx(0.9)
    assert rev.rows[1].predicted == "normal" and rev.rows[1].confidence == pytest.approx(0.4)


def test_threshold_from_metrics_or_override(tmp_path: Path) -> None:
    folder = write_evaluation(tmp_path / "ev", ROWS, threshold=0.96)
    rev = load_review(folder / "predictions.csv")
    assert rev.threshold == 0.96 and [r.id for r in rev.rows if r.is_error] == ["fn_mild"]
    assert [r.kind for r in rev.rows if r.id == "fp_sure"] == ["TN"]  # 0.95 < 0.96
    low = load_review(folder, threshold=0.2)
    assert low.counts() == {"FP": 3, "FN": 0, "TP": 2, "TN": 1}
    assert confidence(0.2, 0.2) == 0.0 and confidence(1.0, 0.2) == 1.0 and confidence(0.0, 0.2) == 1.0


def test_filters_and_sort_are_stable(tmp_path: Path) -> None:
    rev = load_review(write_evaluation(tmp_path / "ev", ROWS))
    assert [r.id for r in filter_rows(rev.rows, kinds={"FP"})] == ["fp_sure", "fp_mild"]
    assert [r.id for r in filter_rows(rev.rows, p_min=0.4, p_max=0.7)] == ["fp_mild", "tn_near"]
    assert [r.id for r in filter_rows(rev.rows, text="SURE")] == ["fp_sure", "tp_sure", "tn_sure"]
    assert filter_rows(rev.rows, kinds=set()) == []
    assert sort_rows(reversed(rev.rows)) == rev.rows


def test_export_csv_round_trips(tmp_path: Path) -> None:
    rev = load_review(write_evaluation(tmp_path / "ev", ROWS))
    out = tmp_path / "errors.csv"
    n = export_csv(filter_rows(rev.rows, kinds={"FP", "FN"}), out, rev.threshold)
    got = list(csv.DictReader(out.read_text().splitlines()))
    assert n == 3 and [g["id"] for g in got] == ["fp_sure", "fn_mild", "fp_mild"]
    assert list(got[0]) == [*EXPORT_COLUMNS, "threshold"] and got[0]["kind"] == "FP"
    assert float(got[0]["probability"]) == pytest.approx(0.95) and got[0]["threshold"] == "0.5"
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d.mkdir(), "holds no predictions.csv"),
        (lambda d: (d.mkdir(), (d / "predictions.csv").write_text("id,p_tumor,predicted\na,0.5,tumor\n")), "no true labels"),
        (lambda d: (d.mkdir(), (d / "predictions.csv").write_text("sample,truth\na,b\n")), "not a patch evaluation"),
        (lambda d: (d.mkdir(), (d / "predictions.csv").write_text("id,label,p_a,p_b\nx,a,0.1,oops\n")), "line 2: not a number"),
        (lambda d: (write_evaluation(d, ROWS), (d / "metrics.json").write_text("{broken")), "damaged"),
        (lambda d: write_evaluation(d, []), "lists no patches"),
    ],
)
def test_bad_folders_raise_one_line_errors(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    make(tmp_path / "ev")
    with pytest.raises(DatasetError, match=message):
        load_review(tmp_path / "ev")


def test_pixels_from_image_files_hdf5_and_missing_files(tmp_path: Path) -> None:
    data = make_folder_dataset(tmp_path / "data", per_class=2, size=32, seed=3)
    png = sorted((data / "tumor").iterdir())[0]
    xp = make_pcam_h5(tmp_path / "h5", per_class=3, size=32, duplicates=False, meta=False)
    rows = [("img", "tumor", 0.9, str(png), 0), ("h5", "normal", 0.8, str(xp), 4),
            ("gone", "tumor", 0.1, str(tmp_path / "gone.png"), 2), ("h5_far", "normal", 0.1, str(xp), 99)]
    rev = load_review(write_evaluation(tmp_path / "ev", rows))
    images = PatchImages(rev)
    by_id = {r.id: r for r in rev.rows}
    img = images.read(by_id["img"])
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    import h5py

    with h5py.File(xp) as f:
        assert np.array_equal(images.read(by_id["h5"]), f["x"][4])
    with pytest.raises(DatasetError, match="image not found"):
        images.read(by_id["gone"])
    with pytest.raises(DatasetError, match="not in"):
        images.read(by_id["h5_far"])
    images.close()


def test_pixels_through_the_dataset_when_no_source_is_recorded(tmp_path: Path) -> None:
    data = make_folder_dataset(tmp_path / "data", per_class=2, size=32, seed=4)
    from engine.data import open_dataset

    ds = open_dataset(data, labelled=True)
    rows = [(pid, ds.class_names[int(y)], 0.5, "", 99) for pid, y in zip(ds.ids, ds.labels, strict=True)]
    rows.append(("not_there", "tumor", 0.5, "", 0))
    folder = write_evaluation(tmp_path / "ev", rows, source=False,
                              metrics={"data": {"path": str(data), "format": ds.fmt, "mpp": None}})
    rev = load_review(folder)
    images = PatchImages(rev)
    first = next(r for r in rev.rows if r.id == ds.ids[1])
    assert first.index == -1 and np.array_equal(images.read(first), ds.read(1))
    with pytest.raises(DatasetError, match="no longer in"):
        images.read(next(r for r in rev.rows if r.id == "not_there"))
    no_data = PatchImages(load_review(write_evaluation(tmp_path / "ev2", ROWS, source=False)))
    with pytest.raises(DatasetError, match="does not say which data"):
        no_data.read(no_data.review.rows[0])


def test_real_evaluate_output_is_reviewable(demo_onnx: Path, tmp_path: Path) -> None:
    from engine.train.evaluate import evaluate

    data = make_folder_dataset(tmp_path / "data", per_class=4, size=96, seed=5)
    evaluate(demo_onnx, data, tmp_path / "ev", device="cpu")
    rev = load_review(tmp_path / "ev")
    assert len(rev.rows) == 8 and rev.positive_class in rev.class_names
    cm = rev.metrics["confusion_matrix"]
    if rev.threshold == 0.5:  # the confusion matrix of metrics.json is at the same threshold
        assert rev.counts()["FP"] + rev.counts()["FN"] == int(np.sum(cm) - np.trace(cm))
    images = PatchImages(rev)
    assert all(images.read(r).shape == (96, 96, 3) for r in rev.rows)
    assert all(isinstance(r, ReviewRow) and Path(r.source).is_file() for r in rev.rows)


def test_cli_prints_top_errors_and_writes_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    folder = write_evaluation(tmp_path / "ev", ROWS)
    out = tmp_path / "fp.csv"
    assert main(["review", str(folder), "--errors", "1", "--kind", "FP", "--csv", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 false positives, 1 false negatives" in text and "fp_sure" in text and "fp_mild" not in text
    assert [r["id"] for r in csv.DictReader(out.read_text().splitlines())] == ["fp_sure", "fp_mild"]
    assert main(["review", str(folder), "--kind", "XY"]) == 2
    assert main(["review", str(tmp_path / "nothing")]) == 2
    assert "error: " in capsys.readouterr().err


def test_slide_tiles_are_read_through_the_reopened_dataset(demo_onnx: Path, annotated_slide_dataset: Path,
                                                           tmp_path: Path) -> None:
    """Annotated slides: `source` names the slide; the tile is cut again from the dataset the evaluation opened."""
    from engine.data import open_dataset
    from engine.train.evaluate import evaluate

    ds = open_dataset(annotated_slide_dataset, labelled=True)
    evaluate(demo_onnx, annotated_slide_dataset, tmp_path / "ev", device="cpu", dataset=ds)
    rev = load_review(tmp_path / "ev")
    assert len(rev.rows) == len(ds) and all(r.source.endswith(".tif") for r in rev.rows)
    row = rev.rows[0]
    images = PatchImages(rev)
    assert np.array_equal(images.read(row), ds.read(row.index))
    images.close()
