"""The Samples and Generator views in the main window, wired to Training, Models and Datasets.

Kept out of ``main_window.py`` so the genomics / expression journey is one place: a finished
run's "Review samples" and a model's evaluation open the Samples view; a generator run or model
opens the Generator view, whose "Train generator" is spawned by the Training view.
"""

from __future__ import annotations

from typing import Any

from gui.icons import icon


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
        window.generator_view.train_requested.connect(lambda req: training.start_run(req, req.run_dir))
    else:  # the viewer edition cannot train; it still generates with onnxruntime
        window.generator_view.train_button.setEnabled(False)
        window.generator_view.train_button.setToolTip("Training needs the full MetaScope edition (PyTorch)")
    window.models_view.review_samples_requested.connect(review)
    window.models_view.generator_requested.connect(open_generator)
    window.datasets_view.datasets_changed.connect(lambda: window.generator_view.reload_datasets())
