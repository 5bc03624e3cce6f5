"""The Samples and Generator views in the main window, wired to Training, Models and Datasets.

Kept out of ``main_window.py`` so the genomics / expression journey is one place: a finished
run's "Review samples" and a model's evaluation open the Samples view; a generator run or model
opens the Generator view, whose "Train generator" is spawned by the Training view.
"""

from __future__ import annotations

from typing import Any

from gui.icons import icon


def open_oneshot_dialog(window: Any, run: str) -> Any:
    """The one-shot panel (N-way test, classify, markers) on a Siamese run's model, in a dialog."""
    from pathlib import Path

    from PySide6.QtWidgets import QDialog, QVBoxLayout

    from gui.views.datasets_view import DatasetStore
    from gui.views.oneshot_panel import OneShotPanel

    dialog = QDialog(window)
    dialog.setWindowTitle(f"One-shot tumour type: {Path(run).name}")
    panel = OneShotPanel(dialog)
    panel.set_model(Path(run) / "model.onnx", DatasetStore().items(), run)
    panel.review_samples_requested.connect(lambda path: (dialog.close(), window.show_view("Samples"),
                                                         window.samples_view.load(path)))
    QVBoxLayout(dialog).addWidget(panel)
    dialog.resize(900, 760)
    dialog.open()
    return dialog


def add_modality_views(window: Any) -> None:
    """Add "Samples" and "Generator" to ``window`` (a :class:`gui.main_window.MainWindow`)."""
    from gui.views.generator_view import GeneratorView
    from gui.views.samples_view import SamplesView

    window.samples_view = SamplesView(window)
    window.generator_view = GeneratorView(window)
    window.add_view("Samples", icon("samples"), window.samples_view)
    window.add_view("Generator", icon("generator"), window.generator_view)

    def review(path: str) -> None:
        window.show_view("Samples")
        window.samples_view.load(path)

    def open_generator(path: str) -> None:
        window.show_view("Generator")
        window.generator_view.select_run(path)

    training = getattr(window, "training_view", None)
    if training is not None:
        training.review_samples_requested.connect(review)
        training.generator_requested.connect(open_generator)
        training.oneshot_requested.connect(lambda run: open_oneshot_dialog(window, run))
        window.generator_view.train_requested.connect(lambda req: training.start_run(req, req.run_dir))
    else:  # the viewer edition cannot train; it still generates with onnxruntime
        window.generator_view.train_button.setEnabled(False)
        window.generator_view.train_button.setToolTip("Training needs the full MetaScope edition (PyTorch)")
    window.models_view.review_samples_requested.connect(review)
    window.models_view.generator_requested.connect(open_generator)
    window.datasets_view.datasets_changed.connect(lambda: window.generator_view.reload_datasets())
