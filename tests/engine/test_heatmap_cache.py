"""The engine's heatmap cache: shared by the app and `metascope heatmap --cache`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from engine.infer import cache
from engine.infer.pipeline import InferenceConfig
from engine.modelpkg import sha256_file
from engine.slides.synthetic import SyntheticSlide


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("METASCOPE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_cli_heatmap_fills_and_reuses_the_app_cache(
    synthetic_tiff_no_mpp: SyntheticSlide, demo_onnx: Path, tmp_path: Path, home: Path, capsys
) -> None:
    slide = tmp_path / "case.tif"
    shutil.copyfile(synthetic_tiff_no_mpp.path, slide)
    sha = sha256_file(demo_onnx)
    argv = ["heatmap", str(slide), "--model", str(demo_onnx), "--mpp", "0.5", "--batch-size", "16", "--workers", "1"]

    assert main([*argv, "--out", str(tmp_path / "a"), "--cache"]) == 0
    assert "from the cache" not in capsys.readouterr().out
    # the folder the app looks in (gui.heatmap_job uses the same engine function)
    folder = cache.cache_folder(slide, sha, 0.5)
    assert folder.parent.parent == home / "cache" / cache.CACHE_SUBDIR
    assert folder.name == f"{sha[:24]}-mpp0.5" and (folder / "heatmap.json").is_file()

    assert main([*argv, "--out", str(tmp_path / "b"), "--cache"]) == 0
    assert "from the cache" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "case" / "heatmap.npy"),
                                  np.load(tmp_path / "b" / "case" / "heatmap.npy"))
    assert json.loads((tmp_path / "b" / "case" / "heatmap.json").read_text())["model"]["sha256"] == sha

    # other result settings are another cache entry; without --cache nothing is read or written
    assert main([*argv, "--out", str(tmp_path / "c"), "--cache", "--stride", "0.5"]) == 0
    assert "from the cache" not in capsys.readouterr().out
    assert len(list(folder.parent.iterdir())) == 2
    shutil.rmtree(home / "cache")
    assert main([*argv, "--out", str(tmp_path / "d")]) == 0
    assert not (home / "cache").exists()


def test_cache_keys(synthetic_tiff_no_mpp: SyntheticSlide, tmp_path: Path, home: Path) -> None:
    import os

    slide = tmp_path / "s.tif"
    shutil.copyfile(synthetic_tiff_no_mpp.path, slide)
    sha = "ab" * 32
    base = cache.cache_folder(slide, sha)
    assert base.name == sha[:24]  # default settings: the name the app has always used
    assert cache.cache_folder(slide, sha, cfg=InferenceConfig(batch_size=8, read_workers=1)) == base
    assert cache.cache_folder(slide, sha, cfg=InferenceConfig(max_tiles=10)) != base
    # the model's operating threshold is the default: the app and the CLI share one folder
    at_model = InferenceConfig(threshold=0.83)
    assert cache.cache_folder(slide, sha, cfg=at_model, model_threshold=0.83) == base
    assert cache.cache_folder(slide, sha, cfg=at_model) != base
    assert cache.cache_folder(slide, sha, cfg=InferenceConfig(threshold=0.5), model_threshold=0.83) != base
    assert cache.load_cached(slide, sha) is None
    st = slide.stat()
    os.utime(slide, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # the slide file changed
    assert cache.cache_folder(slide, sha) != base
    assert cache.load_cached(tmp_path / "missing.tif", sha) is None
