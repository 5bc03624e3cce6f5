"""Slide QC (issue 16): damaged tiles, stain check, artefacts, ``metascope qc``.

Small generated slides (1536 px at 0.5 um/px, 64 px tiles at 1.458 um/px, the first starter model's grid:
a 9 x 9 grid) keep every test to a fraction of a second after the module fixtures.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ConfigError, SlideOpenError
from engine.infer.pipeline import InferenceConfig, compute_heatmap
from engine.infer.session import ModelSession, load_model
from engine.slides.artefacts import (
    add_bubble,
    add_fold,
    blur_region,
    corrupt_tiles,
    draw_pen,
    tile_grid,
    to_dab,
    to_greyscale,
    write_tiled_tiff,
)
from engine.slides.base import ArrayReader
from engine.slides.open import open_slide
from engine.slides.openslide_reader import OpenSlideReader
from engine.slides.qc import QCSettings, laplacian_variance, stain_check
from engine.slides.synthetic import make_texture
from engine.slides.tifffile_reader import TiffFileReader
from engine.slides.tiling import TissueSettings, plan_slide

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "resources" / "models" / "pcam-starter.onnx"
W = 1536


@pytest.fixture(scope="module")
def he() -> np.ndarray:
    return make_texture(W, W, 0.5, seed=3).render(0, 0, W, W)


@pytest.fixture(scope="module")
def session() -> ModelSession:
    return load_model(MODEL, "cpu", intra_op_threads=1)


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory, he: np.ndarray) -> dict[str, Path]:
    """Single-level tiled JPEG TIFFs: clean, one damaged tile, a run, the whole level."""
    d = tmp_path_factory.mktemp("damaged")
    clean = write_tiled_tiff(d / "clean.tif", he, tile=128, levels=1)
    rows, cols, _ = tile_grid(clean)
    out = {"clean": clean}
    for name, idx in [("one", [cols * 5 + 5]), ("run", range(cols * 6 + 3, cols * 6 + 6)), ("level", None)]:
        p = d / f"{name}.tif"
        shutil.copy(clean, p)
        assert corrupt_tiles(p, idx) > 0
        out[name] = p
    return out


# ------------------------------------------------------------------------------ damaged data


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
@pytest.mark.parametrize("name", ["one", "run"])
def test_damaged_tiles_are_left_out_and_reported(
    slides: dict[str, Path], session: ModelSession, backend: str, name: str, tmp_path: Path
) -> None:
    from engine.infer.outputs import write_heatmap_outputs

    reader = open_slide(slides[name]) if backend == "openslide" else TiffFileReader(slides[name])
    assert isinstance(reader, OpenSlideReader if backend == "openslide" else TiffFileReader)
    with reader:
        res = compute_heatmap(reader, session, InferenceConfig(device="cpu", max_unreadable=0.3))
        folder = write_heatmap_outputs(res, tmp_path, reader=reader)
    s = res.summary
    assert s["unreadable_tiles"] > 0
    listed = s["unreadable"]["tiles"]
    assert listed and all("x" in t and "y" in t and t["error"] for t in listed)
    # unreadable planned tiles have no value in the heatmap
    for t in listed:
        if t["index"] >= 0:
            assert np.isnan(res.grid[t["row"], t["col"]])
            assert np.isnan(res.probabilities[t["index"]]).all()
    assert s["tiles_analysed"] > 20
    meta = json.loads((folder / "heatmap.json").read_text())
    assert meta["summary"]["unreadable_tiles"] == s["unreadable_tiles"]
    from PIL import Image

    overlay = np.asarray(Image.open(folder / "overlay.png").convert("RGB"))
    magenta = (overlay[..., 0] > 200) & (overlay[..., 1] < 60) & (overlay[..., 2] > 200)
    assert magenta.any()  # the distinct colour of unreadable tiles


def test_clean_slide_reports_nothing(slides: dict[str, Path], session: ModelSession) -> None:
    with open_slide(slides["clean"]) as reader:
        res = compute_heatmap(reader, session, InferenceConfig(device="cpu"))
    assert res.summary["unreadable_tiles"] == 0
    assert res.summary["qc_excluded_tiles"] == 0
    assert res.summary["qc"]["stain"]["kind"] == "he"
    assert res.summary["warnings"] == []


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_too_many_unreadable_tiles_fail_with_one_line(
    slides: dict[str, Path], session: ModelSession, backend: str
) -> None:
    reader = open_slide(slides["run"]) if backend == "openslide" else TiffFileReader(slides["run"])
    with reader, pytest.raises(SlideOpenError) as exc:
        compute_heatmap(reader, session, InferenceConfig(device="cpu", max_unreadable=0.01))
    msg = str(exc.value)
    assert "\n" not in msg and "cannot be decoded" in msg and "--max-unreadable" in msg


def test_whole_damaged_level_is_one_clear_error(slides: dict[str, Path], session: ModelSession) -> None:
    with pytest.raises(SlideOpenError) as exc:
        open_slide(slides["level"])
    assert "\n" not in str(exc.value) and "level 0" in str(exc.value)
    with TiffFileReader(slides["level"]) as reader, pytest.raises(SlideOpenError) as exc2:
        compute_heatmap(reader, session, InferenceConfig(device="cpu"))
    assert "\n" not in str(exc2.value) and "damaged" in str(exc2.value)


def test_damaged_thumbnail_level_is_read_around(tmp_path: Path, he: np.ndarray, session: ModelSession) -> None:
    """Level 1 all damaged: the thumbnail comes from level 0 and the heatmap is whole."""
    p = write_tiled_tiff(tmp_path / "two.tif", he, tile=128, levels=3)
    corrupt_tiles(p, None, page=2)
    with open_slide(p) as reader:
        res = compute_heatmap(reader, session, InferenceConfig(device="cpu"))
    assert res.summary["tiles_analysed"] > 20


def test_openslide_handle_survives_a_failed_read(slides: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METASCOPE_FAST_DECODE", "0")  # every read through OpenSlide
    rows, cols, tile = tile_grid(slides["one"])
    with open_slide(slides["one"]) as reader:
        assert isinstance(reader, OpenSlideReader)
        with pytest.raises(SlideOpenError):
            reader.read_region((5 * tile, 5 * tile), 0, (tile, tile))
        # OpenSlide leaves a handle in an error state; the reader replaced it
        good = reader.read_region((0, 0), 0, (64, 64))
        assert good.shape == (64, 64, 3)
        with pytest.raises(SlideOpenError):
            reader.read_region((5 * tile, 5 * tile), 0, (tile, tile))
        assert reader.read_region((2 * tile, 2 * tile), 0, (tile, tile)).std() > 0


# ------------------------------------------------------------------------------ stain


def test_stain_check_tells_the_stains_apart(he: np.ndarray) -> None:
    assert stain_check(he).kind == "he"
    assert stain_check(to_greyscale(he)).kind == "greyscale"
    assert stain_check(to_dab(he)).kind == "dab"
    fluo = ((255 - he.astype(np.int32)) // 4).astype(np.uint8)
    assert stain_check(fluo).kind == "fluorescence"


@pytest.fixture(scope="module")
def he_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.modelpkg import read_metadata, write_metadata

    meta = read_metadata(MODEL)
    meta = dataclasses.replace(meta, extra={**meta.extra, "requires_stain": "H&E"})
    return write_metadata(MODEL, meta, tmp_path_factory.mktemp("m") / "he-only.onnx")


@pytest.mark.parametrize("convert", [to_greyscale, to_dab])
def test_non_he_slide_warns_and_he_model_refuses(
    he: np.ndarray, session: ModelSession, he_model: Path, convert: object
) -> None:
    img = convert(he)  # type: ignore[operator]
    res = compute_heatmap(ArrayReader(img, mpp=0.5, levels=3), session, InferenceConfig(device="cpu"))
    assert res.summary["warnings"] and "not" in res.summary["warnings"][0]
    strict = load_model(he_model, "cpu", intra_op_threads=1)
    with pytest.raises(ConfigError) as exc:
        compute_heatmap(ArrayReader(img, mpp=0.5, levels=3), strict, InferenceConfig(device="cpu"))
    assert "--ignore-stain" in str(exc.value) and "\n" not in str(exc.value)
    res = compute_heatmap(ArrayReader(img, mpp=0.5, levels=3), strict, InferenceConfig(device="cpu", ignore_stain=True))
    assert res.summary["tiles_analysed"] > 0 and res.summary["warnings"]


def test_fluorescence_slide_is_reported_not_crashing(he: np.ndarray, session: ModelSession) -> None:
    from engine.errors import NoTissueError

    fluo = ((255 - he.astype(np.int32)) // 4).astype(np.uint8)
    try:
        res = compute_heatmap(ArrayReader(fluo, mpp=0.5, levels=3), session, InferenceConfig(device="cpu"))
    except NoTissueError as exc:  # a clean one-line refusal is fine too
        assert "\n" not in str(exc)
    else:
        assert res.summary["qc"]["stain"]["kind"] == "fluorescence" and res.summary["warnings"]


# ------------------------------------------------------------------------------ artefacts


def _plan(rgb: np.ndarray, keep: bool = False) -> object:
    return plan_slide(ArrayReader(rgb, mpp=0.5, levels=3), 64, 1.458, TissueSettings(), qc=QCSettings(keep_failed=keep))


def test_clean_slide_has_no_artefacts(he: np.ndarray) -> None:
    plan = _plan(he)
    assert plan.qc.counts() == {"pen": 0, "fold": 0, "bubble": 0}


@pytest.mark.parametrize(
    "reason, draw",
    [
        ("pen", lambda a: draw_pen(a, [(300, 300), (900, 500), (1200, 1200)], width=70, colour="green")),
        ("pen", lambda a: draw_pen(a, [(300, 900), (1200, 700)], width=70, colour="blue")),
        ("pen", lambda a: draw_pen(a, [(300, 900), (1200, 700)], width=70, colour="black")),
        ("fold", lambda a: add_fold(a, (500, 500, 1000, 900))),
        ("bubble", lambda a: add_bubble(a, (768, 768), 250)),
    ],
)
def test_artefacts_are_flagged_and_left_out(he: np.ndarray, reason: str, draw: object) -> None:
    img = he.copy()
    draw(img)  # type: ignore[operator]
    plan = _plan(img)
    counts = plan.qc.counts()
    assert counts[reason] >= 1, counts
    assert plan.qc.area_fractions[reason] > 0
    excluded = {tuple(rc) for rc in plan.qc.rc.tolist()}
    assert excluded and not excluded & {tuple(rc) for rc in plan.grid_rc.tolist()}
    kept = _plan(img, keep=True)
    assert kept.n_tiles == plan.n_tiles + len(excluded)
    assert not kept.qc.excluded.any()


def test_blur_is_measured_on_the_analysed_tiles(he: np.ndarray, session: ModelSession, tmp_path: Path) -> None:
    from engine.infer.outputs import write_heatmap_outputs

    img = he.copy()
    blur_region(img, (0, 0, W, W // 2), sigma=6)
    sharp_tiles = he[800:864, 800:864][None]
    assert laplacian_variance(sharp_tiles)[0] > 3 * laplacian_variance(img[100:164, 800:864][None])[0]
    reader = ArrayReader(img, mpp=0.5, levels=3)
    res = compute_heatmap(reader, session, InferenceConfig(device="cpu"))
    qc = res.summary["qc"]
    assert qc["flagged"]["blur"] >= 3
    blurred = [(r, c) for r, c, why in qc["tiles"] if why == "blur"]
    rows = {r for r, _ in blurred}
    assert max(rows) <= res.grid.shape[0] // 2  # only in the blurred top half
    assert all(np.isnan(res.grid[r, c]) for r, c in blurred)
    assert res.summary["qc_excluded_tiles"] >= len(blurred)
    folder = write_heatmap_outputs(res, tmp_path, reader=reader)
    assert json.loads((folder / "heatmap.json").read_text())["summary"]["qc"]["flagged"]["blur"] == len(blurred)
    from PIL import Image

    overlay = np.asarray(Image.open(folder / "overlay.png").convert("RGB")).astype(int)
    orange = (overlay[..., 0] > 230) & (abs(overlay[..., 1] - 170) < 30) & (overlay[..., 2] < 60)
    assert orange.any()  # blurred tiles hatched in the blur colour
    kept = compute_heatmap(reader, session, InferenceConfig(device="cpu", keep_qc_failed=True))
    assert all(np.isfinite(kept.grid[r, c]) for r, c in blurred)
    assert kept.summary["qc"]["flagged"]["blur"] == len(blurred)
