"""MIL feature extraction: per-slide HDF5 bags, bad slides reported, resume, cancel, ROI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.data.geojson import points_in_rings
from engine.errors import Cancelled, ModelPackageError, NoTissueError
from engine.jobs import CancelToken
from engine.mil.bags import bag_path, read_bag
from engine.mil.cohort import load_cohort
from engine.mil.features import FeatureConfig, extract_cohort, load_extractor
from tests.fixtures.cohort import TILE_MPP, TILE_PX


def test_cohort_extraction_reports_bad_slides_and_writes_bags(mil_cohort, mil_features) -> None:
    features, rep = mil_features
    assert rep.failed.keys() == {mil_cohort.broken_id}
    assert "not a slide" in rep.failed[mil_cohort.broken_id]
    assert rep.no_tissue.keys() == {mil_cohort.blank_id} and "no tissue" in rep.no_tissue[mil_cohort.blank_id]
    assert sorted(rep.done) == sorted(mil_cohort.slides)
    summary = json.loads((features / "extraction.json").read_text())
    assert summary["failed"] and summary["no_tissue"] and summary["extractor"]["feature_dim"] == 16

    sid = sorted(mil_cohort.slides)[3]
    bag = read_bag(bag_path(features, sid))
    assert bag.features.dtype == np.float32 and bag.features.shape == (bag.n, 16) and bag.n > 20
    assert bag.attrs["extractor_sha256"] == load_extractor(mil_cohort.extractor, "cpu").sha256
    assert bag.attrs["mpp"] == TILE_MPP and bag.attrs["tile_size"] == TILE_PX
    step = bag.attrs["stride_level0"]
    assert step == bag.attrs["tile_size_level0"] == 64  # 32 px at 1.0 um/px on a 0.5 um/px slide
    assert np.array_equal(bag.coords, bag.grid_rc[:, ::-1] * step)  # level-0 (x, y) = (col, row) * stride
    # tumour tiles are darker and more purple than the rest of the tissue
    frac = mil_cohort.slides[sid].tumour_fraction(bag.coords, step)
    if (frac > 0.8).sum() >= 3:
        assert bag.features[frac > 0.8, 9].mean() > bag.features[frac < 0.05, 9].mean() + 0.1


def test_extraction_resumes_and_cancels_cleanly(mil_cohort, mil_features, tmp_path: Path) -> None:
    features, _ = mil_features
    cohort = load_cohort(mil_cohort.manifest)
    rep = extract_cohort(cohort, mil_cohort.extractor, features, FeatureConfig(device="cpu"))
    assert sorted(rep.skipped) == sorted(mil_cohort.slides) and not rep.done  # all complete: skipped

    token = CancelToken()
    seen = []

    def progress(ev) -> None:
        seen.append(ev)
        if "tiles" in ev.message and ev.step == 1:  # cancel while the second slide is being read
            token.cancel()

    out = tmp_path / "feats"
    with pytest.raises(Cancelled):
        extract_cohort(cohort, mil_cohort.extractor, out, FeatureConfig(device="cpu"), progress=progress, cancel=token)
    written = sorted(p.name for p in out.glob("*.h5"))
    assert written == [f"{cohort.entries[0].slide_id}.h5"]  # only the finished slide; no partial file
    assert not list(out.glob("*.part"))


def test_roi_restricts_tiles_and_bad_extractors_are_refused(mil_cohort, tmp_path: Path) -> None:
    from engine.mil.features import extract_slide
    from engine.slides.open import open_slide

    ex = load_extractor(mil_cohort.extractor, "cpu")
    sid = sorted(mil_cohort.slides)[0]
    roi = tmp_path / "roi.geojson"
    square = [[200, 200], [500, 200], [500, 500], [200, 500], [200, 200]]
    roi.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]}}],
            }
        )
    )
    with open_slide(mil_cohort.root / "slides" / f"{sid}.svs") as reader:
        full = extract_slide(reader, ex, FeatureConfig(device="cpu"))
        part = extract_slide(reader, ex, FeatureConfig(device="cpu"), roi=roi)
        assert 0 < part.n < full.n
        centres = part.coords + 32
        assert ((centres >= 200) & (centres <= 500)).all()
        far = tmp_path / "far.geojson"
        far.write_text(json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [20, 0], [20, 20], [0, 0]]]}))
        with pytest.raises(NoTissueError, match="region of interest"):
            extract_slide(reader, ex, FeatureConfig(device="cpu"), roi=far)
    assert points_in_rings(
        np.array([[5.0, 5.0], [50.0, 50.0]]), [np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)]
    ).tolist() == [True, False]
    with pytest.raises(ModelPackageError):
        load_extractor(tmp_path / "missing.onnx", "cpu")


def test_bags_are_reused_only_when_every_setting_matches(mil_cohort, tmp_path: Path) -> None:
    """ROI, tissue settings, tile cap and the slide file are fingerprinted; a change recomputes."""
    import csv
    import os

    from engine.mil.bags import bag_info, stored_fingerprint

    a, b = sorted(mil_cohort.slides)[:2]
    slides = {sid: mil_cohort.root / "slides" / f"{sid}.svs" for sid in (a, b)}
    roi = tmp_path / "roi.geojson"
    square = [[100, 100], [600, 100], [600, 600], [100, 600], [100, 100]]
    roi.write_text(json.dumps({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]}}))

    def manifest(with_roi: bool) -> Path:
        path = tmp_path / ("roi.csv" if with_roi else "plain.csv")
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["slide", "label", "patient", "roi"])
            w.writerow([slides[a], "N+", "p1", roi if with_roi else ""])
            w.writerow([slides[b], "N0", "p2", ""])
        return path

    out = tmp_path / "feats"
    plain = load_cohort(manifest(False))
    ex = load_extractor(mil_cohort.extractor, "cpu")
    cfg = FeatureConfig(device="cpu", read_workers=1)
    first = extract_cohort(plain, ex, out, cfg)
    assert sorted(first.done) == [a, b] and not first.recomputed
    fp = stored_fingerprint(bag_info(bag_path(out, a)) or {})
    assert fp is not None and fp["extractor_sha256"] == ex.sha256 and fp["tile_size"] == TILE_PX
    assert fp["roi_sha256"] == "" and fp["slide_size"] == slides[a].stat().st_size and fp["max_tiles"] is None
    again = extract_cohort(plain, ex, out, cfg)
    assert sorted(again.skipped) == [a, b] and not again.done

    capped = extract_cohort(plain, ex, out, FeatureConfig(device="cpu", read_workers=1, max_tiles=5))
    assert capped.recomputed == {a: "max_tiles", b: "max_tiles"} and sorted(capped.done) == [a, b]
    assert read_bag(bag_path(out, a)).n == 5
    assert any("recomputed (settings changed: max_tiles)" in line for line in capped.lines())

    tissue = extract_cohort(plain, ex, out, FeatureConfig(device="cpu", read_workers=1, min_tissue_fraction=0.6))
    assert set(tissue.recomputed[a].split(", ")) == {"max_tiles", "min_tissue_fraction"}

    with_roi = extract_cohort(load_cohort(manifest(True)), ex, out, FeatureConfig(device="cpu", read_workers=1, min_tissue_fraction=0.6))
    assert with_roi.recomputed == {a: "roi_sha256"} and with_roi.skipped == [b]
    centres = read_bag(bag_path(out, a)).coords + 32
    assert np.all((centres >= 100) & (centres <= 600))

    st = slides[b].stat()
    os.utime(slides[b], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # the slide file changed
    try:
        touched = extract_cohort(load_cohort(manifest(True)), ex, out, FeatureConfig(device="cpu", read_workers=1, min_tissue_fraction=0.6))
    finally:
        os.utime(slides[b], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert touched.recomputed == {b: "slide_mtime_ns"} and touched.skipped == [a]
