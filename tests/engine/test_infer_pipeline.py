"""The streaming pipeline and the heatmap: right answer, partial results, cancel, config."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from engine.demo import roc_auc
from engine.errors import Cancelled, ConfigError, MissingMppError, ModelPackageError, NoTissueError
from engine.infer.pipeline import HeatmapResult, InferenceConfig, compute_heatmap, iter_tile_outputs
from engine.infer.session import load_model
from engine.jobs import CancelToken, ProgressEvent
from engine.slides.open import open_slide
from engine.slides.synthetic import SyntheticSlide
from engine.slides.tiling import TilingConfig, plan_tiles


@pytest.fixture(scope="module")
def svs_heatmap(synthetic_svs: SyntheticSlide, demo_onnx: Path) -> tuple[HeatmapResult, list, list]:
    """Heatmap of the synthetic SVS, with the progress events and batch callbacks it produced."""
    events: list[ProgressEvent] = []
    batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    result = compute_heatmap(
        synthetic_svs.path,
        demo_onnx,
        InferenceConfig(batch_size=32),
        progress=events.append,
        on_batch=lambda r, c, p: batches.append((r.copy(), c.copy(), p.copy())),
    )
    return result, events, batches


def _tile_labels(result: HeatmapResult, truth: SyntheticSlide) -> np.ndarray:
    return truth.tumour_fraction(result.level0_xy, result.tile_size_level0)


def test_heatmap_is_high_in_the_tumour_and_low_outside(svs_heatmap, synthetic_svs: SyntheticSlide) -> None:
    result, _, _ = svs_heatmap
    frac = _tile_labels(result, synthetic_svs)
    p = result.positive_probabilities
    inside, outside = frac >= 0.5, frac == 0
    assert inside.sum() >= 4 and outside.sum() >= 50
    auc = roc_auc(p[inside | outside], inside[inside | outside])
    assert auc is not None and auc >= 0.9
    assert np.median(p[inside]) > 0.8
    assert np.median(p[outside]) < 0.2
    # the slide-level summary points at the tumour
    top = result.summary["top_tiles"][0]
    assert _tile_labels_at(synthetic_svs, top["x"], top["y"], top["width"]) > 0.5
    assert result.summary["max_probability"] > 0.9
    assert 0 < result.summary["fraction_above_threshold"] < 0.3


def _tile_labels_at(truth: SyntheticSlide, x: int, y: int, size: int) -> float:
    return float(truth.tumour_fraction(np.array([[x, y]]), size)[0])


def test_heatmap_grid_is_nan_off_tissue_and_matches_tiles(svs_heatmap, synthetic_svs: SyntheticSlide) -> None:
    result, _, _ = svs_heatmap
    grid = result.grid
    assert grid.dtype == np.float32
    r, c = result.grid_rc[:, 0], result.grid_rc[:, 1]
    np.testing.assert_array_equal(grid[r, c], result.positive_probabilities)
    assert np.isfinite(grid).sum() == len(result.level0_xy)
    # the slide corners are glass: not analysed
    assert np.isnan(grid[0, 0]) and np.isnan(grid[-1, -1])
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # 96 px at 0.972 um/px on a 0.5 um/px slide
    assert result.tile_size_level0 == round(96 * 0.972 / 0.5)
    assert result.slide_mpp == pytest.approx(0.5) and result.slide_mpp_source == "file"
    assert result.summary["tissue_area_mm2"] > 0


def test_progress_and_batches_cover_every_tile_once(svs_heatmap) -> None:
    result, events, batches = svs_heatmap
    heat = [e for e in events if e.stage == "heatmap"]
    steps = [e.step for e in heat]
    assert steps == sorted(steps) and steps[-1] == heat[-1].total == len(result.level0_xy)
    rows = np.concatenate([b[0] for b in batches])
    cols = np.concatenate([b[1] for b in batches])
    assert len(batches) == -(-len(result.level0_xy) // 32)
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) == len(rows) == len(result.level0_xy)


def test_partial_grid_is_filled_in_place(array_slide, demo_onnx: Path) -> None:
    seen: dict[str, object] = {}
    finite_counts: list[int] = []

    def on_start(plan, grid):  # type: ignore[no-untyped-def]
        seen["grid"] = grid
        assert np.isnan(grid).all()

    def on_batch(rows, cols, probs):  # type: ignore[no-untyped-def]
        grid = seen["grid"]
        np.testing.assert_array_equal(grid[rows, cols], probs)  # already stored when told
        finite_counts.append(int(np.isfinite(grid).sum()))

    result = compute_heatmap(array_slide, demo_onnx, InferenceConfig(batch_size=8), on_start=on_start, on_batch=on_batch)
    assert seen["grid"] is result.grid
    assert finite_counts == sorted(finite_counts) and finite_counts[-1] == len(result.level0_xy)
    assert len(finite_counts) > 1


def _pipeline_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("metascope-tiles")]


def test_cancel_mid_run_stops_promptly_and_stops_the_readers(array_slide, demo_onnx: Path) -> None:
    cancel = CancelToken()
    batches = []

    def on_batch(rows, cols, probs):  # type: ignore[no-untyped-def]
        batches.append(len(rows))
        cancel.cancel()

    with pytest.raises(Cancelled):
        compute_heatmap(array_slide, demo_onnx, InferenceConfig(batch_size=4, read_workers=2), cancel=cancel, on_batch=on_batch)
    assert len(batches) == 1  # no second batch after Cancel
    assert _pipeline_threads() == []


def test_cancel_from_another_thread_interrupts_slow_reads(array_slide, demo_onnx: Path) -> None:
    session = load_model(demo_onnx)
    plan = plan_tiles(array_slide, TilingConfig(96, 0.972, min_tissue_fraction=0.0), None)
    from engine.slides.tiling import read_tile

    cancel = CancelToken()
    reads: list[int] = []
    reading = threading.Event()

    def stalled_read(reader, plan, xy):  # type: ignore[no-untyped-def]
        """A stalled network drive: no read returns until Cancel is pressed."""
        reads.append(1)
        reading.set()
        cancel.wait(30)
        return read_tile(reader, plan, xy)

    def press_cancel_once_reading() -> None:  # the user, from the GUI thread
        reading.wait(30)
        cancel.cancel()

    threading.Thread(target=press_cancel_once_reading, daemon=True).start()
    with pytest.raises(Cancelled):
        for _ in iter_tile_outputs(array_slide, plan, session, batch_size=64, read_workers=2, cancel=cancel,
                                   read_tile=stalled_read):
            pass
    # a batch is 64 tiles; each of the workers (two readers, or one per onnxruntime thread when
    # batches run on one-thread copies of the session) stops at its next tile instead
    assert 1 <= len(reads) <= max(2, session.intra_op_threads)
    assert _pipeline_threads() == []


def test_closing_the_generator_shuts_the_pool_down(array_slide, demo_onnx: Path) -> None:
    session = load_model(demo_onnx)
    plan = plan_tiles(array_slide, TilingConfig(96, 0.972, min_tissue_fraction=0.0), None)
    gen = iter_tile_outputs(array_slide, plan, session, batch_size=2, read_workers=2)
    idx, out = next(gen)
    assert out.shape == (2, 2) and list(idx) == [0, 1]
    gen.close()
    assert _pipeline_threads() == []


def test_read_errors_propagate_to_the_caller(array_slide, demo_onnx: Path) -> None:
    session = load_model(demo_onnx)
    plan = plan_tiles(array_slide, TilingConfig(96, 0.972, min_tissue_fraction=0.0), None)

    def broken(reader, plan, xy):  # type: ignore[no-untyped-def]
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(iter_tile_outputs(array_slide, plan, session, read_tile=broken))
    assert _pipeline_threads() == []


def test_no_tissue_and_missing_mpp(blank_slide: SyntheticSlide, synthetic_tiff_no_mpp: SyntheticSlide, demo_onnx: Path) -> None:
    with pytest.raises(NoTissueError):
        compute_heatmap(blank_slide.path, demo_onnx)
    with pytest.raises(MissingMppError, match="--mpp"):
        compute_heatmap(synthetic_tiff_no_mpp.path, demo_onnx)
    result = compute_heatmap(synthetic_tiff_no_mpp.path, demo_onnx, InferenceConfig(slide_mpp=0.5))
    assert result.slide_mpp_source == "user" and result.slide_mpp == 0.5


def test_feature_extractor_cannot_make_a_heatmap(demo_onnx: Path, tmp_path: Path, array_slide) -> None:
    from dataclasses import replace

    from engine.modelpkg import read_metadata, write_metadata

    meta = replace(read_metadata(demo_onnx), task="feature_extractor", class_names=(), feature_dim=2)
    fe = write_metadata(demo_onnx, meta, out_path=tmp_path / "fe.onnx")
    with pytest.raises(ModelPackageError, match="patch classification"):
        compute_heatmap(array_slide, fe)


def test_stride_overlap_gives_a_finer_grid(array_slide, demo_onnx: Path) -> None:
    full = compute_heatmap(array_slide, demo_onnx, InferenceConfig())
    half = compute_heatmap(array_slide, demo_onnx, InferenceConfig(stride_factor=0.5, max_tiles=40))
    assert half.stride_level0 == pytest.approx(full.stride_level0 / 2, abs=1)
    assert half.grid.shape[0] > 1.5 * full.grid.shape[0]
    assert len(half.level0_xy) == 40


def test_inference_config_validates_and_round_trips() -> None:
    cfg = InferenceConfig(batch_size=16, threshold=0.7, slide_mpp=0.25, max_tiles=100)
    assert InferenceConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ({"batch_size": 0}, {"threshold": 1.5}, {"device": "gpu"}, {"stride_factor": 0}, {"slide_mpp": -1},
                {"read_workers": True}, {"max_tiles": 0}):
        with pytest.raises(ConfigError):
            InferenceConfig(**bad)
    with pytest.raises(ConfigError, match="unknown"):
        InferenceConfig.from_dict({"batch": 3})


def test_open_reader_is_left_open(synthetic_svs: SyntheticSlide, demo_onnx: Path) -> None:
    with open_slide(synthetic_svs.path) as reader:
        r = compute_heatmap(reader, load_model(demo_onnx), InferenceConfig(max_tiles=8))
        assert len(r.level0_xy) == 8
        assert reader.read_region((0, 0), 0, (4, 4)).shape == (4, 4, 3)  # still usable


def test_block_reads_give_the_per_tile_heatmap(synthetic_svs: SyntheticSlide, demo_onnx: Path) -> None:
    """The default batch reads (neighbours read together) change no probability noticeably."""
    from engine.slides.tiling import read_tile

    session = load_model(demo_onnx)
    with open_slide(synthetic_svs.path) as r:
        plan = plan_tiles(r, TilingConfig(96, 0.972, min_tissue_fraction=0.0), None)
        idx = np.r_[0 : plan.n_tiles : 3, 1 : plan.n_tiles // 2]  # lone tiles, then runs of neighbours
        outs = {}
        for name, fn in (("block", None), ("tile", read_tile)):
            got = np.full((plan.n_tiles, 2), np.nan, np.float32)
            for i, out in iter_tile_outputs(r, plan, session, batch_size=16, indices=idx, read_tile=fn):
                got[i] = out
            outs[name] = got
    assert np.isfinite(outs["block"][idx]).all()
    meta = session.metadata
    from engine.infer.preprocess import to_probabilities

    p_block = to_probabilities(outs["block"][idx], meta)[:, meta.positive_class]
    p_tile = to_probabilities(outs["tile"][idx], meta)[:, meta.positive_class]
    assert np.abs(p_block - p_tile).max() < 0.02
