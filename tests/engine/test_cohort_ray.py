"""Cohorts on a local Ray cluster (127.0.0.1, 2 worker CPUs): a worker killed mid-slide, results
identical to the single-process run; ``mil features`` and ``evaluate-slides`` with ``--ray``.

Slow (a Ray cluster starts in several seconds); skipped when Ray is not installed.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from engine.slides.synthetic import write_synthetic_slide

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A new local cluster with 2 CPUs: at most 2 slide tasks (worker processes) at once."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("ray-cohort")
    return [
        write_synthetic_slide(root / f"slide{i}.tif", 2048, 1536, flavour="generic", levels=2, seed=i,
                              with_label=False).path
        for i in range(3)
    ]


def _crash_once(victim: str, marker: Path, log: Path):  # type: ignore[no-untyped-def]
    """The real per-slide function, except that the worker analysing ``victim`` dies (os._exit)
    after its first tile batch, once; every finished call is logged."""
    from engine.cohort.tasks import heatmap_slide

    def run(job, item, progress=None, cancel=None):  # type: ignore[no-untyped-def]
        def killing_progress(ev):  # type: ignore[no-untyped-def]
            if Path(item.slide).name == victim and ev.step > 0:
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    pass  # the retry: let it finish
                else:
                    os.close(fd)
                    os._exit(1)  # the worker process dies mid-slide
            if progress is not None:
                progress(ev)

        outcome = heatmap_slide(job, item, killing_progress, cancel)
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{Path(item.slide).name} {outcome.status}\n")
        return outcome

    return run


def test_killed_worker_slide_is_retried_and_every_slide_finishes_once(
    cluster, slides: list[Path], demo_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import engine.cohort.tasks as tasks

    common = ["--model", str(demo_onnx), "--mpp", "0.5", "--batch-size", "16", "--workers", "1"]
    assert main(["heatmap", *map(str, slides), "--out", str(tmp_path / "plain"), *common]) == 0
    capsys.readouterr()

    marker, log = tmp_path / "killed", tmp_path / "finished.log"
    monkeypatch.setattr(tasks, "heatmap_slide", _crash_once(slides[1].name, marker, log))
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    monkeypatch.chdir(slides[0].parent)  # relative paths: the workers' working directory is not ours
    rel_out = os.path.relpath(tmp_path / "ray")
    try:
        rc = main(["heatmap", *(s.name for s in slides), "--out", rel_out, *common, "--ray", "auto"])
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert marker.exists()  # a worker really died mid-slide
    finished = sorted(log.read_text().split("\n")[:-1])
    assert finished == sorted(f"{s.name} done" for s in slides)  # each slide finished exactly once
    assert "3 slide(s): 3 done" in err
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == ["slide0", "slide1", "slide2"]
    for s in slides:
        plain = np.load(tmp_path / "plain" / s.stem / "heatmap.npy")
        remote = np.load(tmp_path / "ray" / s.stem / "heatmap.npy")
        np.testing.assert_array_equal(plain, remote, err_msg=s.name)
        meta = [json.loads((tmp_path / d / s.stem / "heatmap.json").read_text()) for d in ("plain", "ray")]
        for m in meta:
            m["summary"]["qc"].pop("seconds")  # a timing
        assert meta[0]["summary"] == meta[1]["summary"] and meta[0]["lesions"] == meta[1]["lesions"]

    # a rerun skips every finished slide
    assert main(["heatmap", *map(str, slides), "--out", str(tmp_path / "ray"), *common, "--ray", "auto"]) == 0
    assert capsys.readouterr().out.count("already done") == 3


def test_features_and_evaluation_on_ray_equal_the_loop(
    cluster, slides: list[Path], demo_onnx: Path, tmp_path: Path, capsys
) -> None:
    import h5py

    from engine.mil.extractor import build_stats_extractor

    extractor = build_stats_extractor(tmp_path / "stats.onnx", input_size=96, input_mpp=0.972)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("slide,label,patient\n" + "".join(f"{s},{'N+' if i else 'N0'},p{i}\n" for i, s in enumerate(slides)))
    feats = ["mil", "features", str(manifest), "--extractor", str(extractor), "--slide-mpp", "0.5", "--device", "cpu"]
    assert main([*feats, "--out", str(tmp_path / "f_plain")]) == 0
    assert main([*feats, "--out", str(tmp_path / "f_ray"), "--ray", "auto"]) == 0
    rep = json.loads((tmp_path / "f_ray" / "extraction.json").read_text())
    assert sorted(rep["done"]) == ["slide0", "slide1", "slide2"] and not rep["failed"]
    for s in slides:
        with h5py.File(tmp_path / "f_plain" / f"{s.stem}.h5") as a, h5py.File(tmp_path / "f_ray" / f"{s.stem}.h5") as b:
            np.testing.assert_array_equal(a["features"][:], b["features"][:])
    assert main([*feats, "--out", str(tmp_path / "f_ray"), "--ray", "auto"]) == 0
    assert "3 already done" in capsys.readouterr().out

    ev = ["evaluate-slides", "--model", str(demo_onnx), "--slides", *map(str, slides), "--slide-mpp", "0.5"]
    assert main([*ev, "--out", str(tmp_path / "e_plain")]) == 0
    assert main([*ev, "--out", str(tmp_path / "e_ray"), "--ray", "auto"]) == 0
    m = [json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("e_plain", "e_ray")]
    for key in ("slides", "tiles", "tile_auc", "slide_auc", "froc_score", "failed"):
        assert m[0][key] == m[1][key], key
    assert [r["score"] for r in m[0]["per_slide"]] == [r["score"] for r in m[1]["per_slide"]]


def test_cancel_stops_the_cohort(cluster, slides: list[Path], demo_onnx: Path, tmp_path: Path) -> None:
    import time

    from engine.cohort.ray_runner import RaySettings, run_on_ray
    from engine.cohort.tasks import HeatmapJob, heatmap_slide, named_slides
    from engine.errors import Cancelled
    from engine.infer.pipeline import InferenceConfig
    from engine.jobs import CancelToken

    cancel = CancelToken()
    cancel.cancel()  # Cancel pressed as the cohort starts
    job = HeatmapJob(str(demo_onnx), "cpu", InferenceConfig(slide_mpp=0.5), tmp_path / "out", skip_existing=True)
    finished: list[str] = []
    with pytest.raises(Cancelled):
        run_on_ray(heatmap_slide, job, named_slides(list(map(str, slides))), [s.name for s in slides], RaySettings(),
                   lambda _i, o: finished.append(o.slide), cancel=cancel)
    assert not finished
    deadline = time.monotonic() + 120  # the cancelled tasks give their CPUs back (waits on state)
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2, ray.available_resources()
    for folder in (tmp_path / "out").glob("*"):  # a slide is written whole or not at all
        assert (folder / "heatmap.json").is_file()

    # what a user does next: run the cohort again on the same cluster; it finishes every slide
    run_on_ray(heatmap_slide, job, named_slides(list(map(str, slides))), [s.name for s in slides], RaySettings(),
               lambda _i, o: finished.append(o.slide) if o.status == "done" else None)
    assert sorted(Path(f).name for f in finished) == sorted(s.name for s in slides)  # each once
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["slide0", "slide1", "slide2"]


def _hold_until_cancelled(job, item, progress=None, cancel=None):  # type: ignore[no-untyped-def]
    """The real per-slide function, except that after its first tile batch it waits for the cohort's
    Cancel (at most 2 minutes), so the cancel surely arrives mid-slide."""
    import time

    from engine.cohort.tasks import heatmap_slide

    def holding_progress(ev):  # type: ignore[no-untyped-def]
        if progress is not None:
            progress(ev)
        if ev.stage == "heatmap" and ev.step > 0:
            deadline = time.monotonic() + 120
            while not cancel.cancelled and time.monotonic() < deadline:
                time.sleep(0.05)

    return heatmap_slide(job, item, holding_progress, cancel)


def test_cancel_mid_slide_stops_the_workers_cleanly(cluster, slides: list[Path], demo_onnx: Path, tmp_path: Path) -> None:
    import time

    from engine.cohort.ray_runner import RaySettings, run_on_ray
    from engine.cohort.tasks import HeatmapJob, heatmap_slide, named_slides
    from engine.errors import Cancelled
    from engine.infer.pipeline import InferenceConfig
    from engine.jobs import CancelToken

    cancel = CancelToken()
    seen: list[str] = []

    def driver_progress(ev) -> None:  # type: ignore[no-untyped-def]
        seen.append(ev.message)
        if "running" in ev.message:  # a worker is part-way through a slide: press Cancel
            cancel.cancel()

    job = HeatmapJob(str(demo_onnx), "cpu", InferenceConfig(slide_mpp=0.5), tmp_path / "out", skip_existing=True)
    items, labels = named_slides(list(map(str, slides))), [s.name for s in slides]
    finished: list[str] = []
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    try:
        with pytest.raises(Cancelled):
            run_on_ray(_hold_until_cancelled, job, items, labels, RaySettings(), lambda _i, o: finished.append(o.slide),
                       progress=driver_progress, cancel=cancel)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert not finished and any("running" in m for m in seen)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing half-written
    deadline = time.monotonic() + 120  # waits on state: the stopped tasks give their CPUs back
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2, ray.available_resources()
    # the same workers run the next cohort: every slide done, none failed
    outcomes: list[str] = []
    run_on_ray(heatmap_slide, job, items, labels, RaySettings(), lambda _i, o: outcomes.append(o.status))
    assert outcomes == ["done"] * 3


def test_a_slide_no_node_can_take_is_an_error_not_a_hang(cluster, slides: list[Path], demo_onnx, tmp_path, capsys) -> None:
    argv = ["heatmap", str(slides[0]), "--model", str(demo_onnx), "--out", str(tmp_path / "o"), "--mpp", "0.5"]
    assert main([*argv, "--ray", "auto", "--ray-cpus", "4"]) == 2
    assert "error: --ray-cpus 4: no node of the Ray cluster has that many CPUs (the largest has 2)" in capsys.readouterr().err
