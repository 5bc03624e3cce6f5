"""Heavy slide jobs run in a child process (gui.workers.ProcessWorker): results, errors as dialog
text, a child that dies, a child that ignores Cancel, and no torch in the child.

The job functions below run in the spawned child, which imports this module to find them: its
top level therefore imports neither Qt nor torch.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from engine.slides.synthetic import SyntheticSlide

CHILD_TIMEOUT_MS = 300_000  # a limit for a busy machine; an idle one needs seconds


def heatmap_then_modules(slide_path, model, progress=None, cancel=None, partial=None):  # type: ignore[no-untyped-def]
    """Child job: compute the heatmap, then report which heavy modules the child imported."""
    from gui import heatmap_job as hj

    data = hj.run_heatmap(slide_path, model, progress=progress, cancel=cancel, partial=partial)
    loaded = sorted(m for m in ("torch", "PySide6") if m in sys.modules)
    return data.n_tiles, loaded


def refuse_the_slide(path, progress=None, cancel=None, partial=None):  # type: ignore[no-untyped-def]
    """Child job: fails like a damaged slide does."""
    from engine.slides import open_slide

    open_slide(path)
    return "opened"


def die_suddenly(progress=None, cancel=None, partial=None):  # type: ignore[no-untyped-def]
    """Child job: the process vanishes (as if killed for memory) without a word."""
    os._exit(3)


def ignore_cancel(progress=None, cancel=None, partial=None):  # type: ignore[no-untyped-def]
    """Child job: stuck in a long native call that never checks Cancel."""
    partial("started")
    time.sleep(3600)
    return "never"


@pytest.fixture(scope="module")
def demo_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.demo import demo_model

    return demo_model(tmp_path_factory.mktemp("workers-model") / "demo-model.onnx")


def _outcome(qtbot, worker) -> dict:  # type: ignore[no-untyped-def]
    out: dict = {"partial": [], "progress": []}
    worker.signals.partial.connect(out["partial"].append)
    worker.signals.progress.connect(out["progress"].append)
    worker.signals.finished.connect(lambda r: out.setdefault("finished", r))
    worker.signals.failed.connect(lambda m, u, d: out.setdefault("failed", (m, u, d)))
    worker.signals.cancelled.connect(lambda: out.setdefault("cancelled", True))
    return out


def _wait(qtbot, worker, out: dict) -> None:  # type: ignore[no-untyped-def]
    qtbot.waitUntil(lambda: any(k in out for k in ("finished", "failed", "cancelled")), timeout=CHILD_TIMEOUT_MS)
    assert worker.wait(5.0) and worker.done


def test_a_heatmap_runs_in_a_child_that_never_imports_torch(qtbot, synthetic_svs: SyntheticSlide,
                                                            demo_model_file: Path) -> None:  # type: ignore[no-untyped-def]
    from gui import heatmap_job as hj
    from gui.workers import ProcessWorker

    model = hj.describe_model(str(demo_model_file))
    worker = ProcessWorker(heatmap_then_modules, str(synthetic_svs.path), model)
    out = _outcome(qtbot, worker)
    worker.start()
    _wait(qtbot, worker, out)
    assert "failed" not in out, out.get("failed")
    n_tiles, loaded = out["finished"]
    assert n_tiles > 100
    assert loaded == [], f"the heatmap child imported {loaded}"
    assert worker.pid is not None and worker.pid != os.getpid()
    # batches streamed back while it ran: the plan first, then rows/cols/probabilities
    assert isinstance(out["partial"][0], hj.HeatmapStarted)
    batches = [c for c in out["partial"] if isinstance(c, hj.HeatmapBatch)]
    assert sum(len(b.rows) for b in batches) == n_tiles
    assert any(e.stage == "heatmap" and e.total == n_tiles for e in out["progress"])


def test_a_bad_slide_in_the_child_comes_back_as_a_one_line_message(qtbot, not_a_slide: Path) -> None:  # type: ignore[no-untyped-def]
    from gui.workers import ProcessWorker

    worker = ProcessWorker(refuse_the_slide, str(not_a_slide))
    out = _outcome(qtbot, worker)
    worker.start()
    _wait(qtbot, worker, out)
    message, user_error, _details = out["failed"]
    assert user_error and not_a_slide.name in message and "\n" not in message


def test_a_child_that_dies_is_reported_not_waited_for(qtbot) -> None:  # type: ignore[no-untyped-def]
    from gui.workers import ProcessWorker

    worker = ProcessWorker(die_suddenly)
    out = _outcome(qtbot, worker)
    worker.start()
    _wait(qtbot, worker, out)
    message, user_error, _ = out["failed"]
    assert not user_error and "stopped unexpectedly" in message and "exit code 3" in message


def test_cancel_ends_a_child_that_ignores_it(qtbot) -> None:  # type: ignore[no-untyped-def]
    from gui.workers import ProcessWorker

    worker = ProcessWorker(ignore_cancel, cancel_grace_s=0.5)
    out = _outcome(qtbot, worker)
    worker.start()
    qtbot.waitUntil(lambda: out["partial"] == ["started"], timeout=CHILD_TIMEOUT_MS)
    worker.cancel()
    # the child would sleep an hour, far past the wait's limit: ending within it means it was ended
    _wait(qtbot, worker, out)
    assert out.get("cancelled") and "finished" not in out
