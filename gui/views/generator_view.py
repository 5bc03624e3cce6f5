"""The Generator view: train a conditional WGAN-GP on chosen genes, generate, and see how real it looks.

1. Train: a matrix (imported with its sample table), genes (a list, or DEG between two groups),
   covariates, an optional subset; the run is spawned by the Training view like every run, and
   followed here too (critic / generator losses and the live gamma on held-out samples).
2. Generate: N profiles for chosen covariate values (or the training distribution), then the
   realism report beside the Gaussian baseline (``expression generate`` + ``expression realism``).
3. Export the synthetic table.
"""

from __future__ import annotations

import html
import shutil
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from engine.paths import runs_dir
from engine.runs import EventFollower, RunHistory, list_runs, new_run_dir, run_info
from gui.modalities import EXPRESSION_MATRIX, dataset_kind, read_json, wgan_train_args
from gui.views.cli_runner import CliRunner
from gui.views.modality_results import PngGallery, metrics_table_html
from gui.views.oneshot_panel import results_dir
from gui.widgets.plot_canvas import PlotCanvas, draw_curves
from gui.wizard.common import MessageLabel
from gui.wizard.page_modality import GeneSelector, ModalityRequest, label_columns

POLL_MS = 500


class GeneratorView(QWidget):
    """Synthetic expression: train, follow, generate, judge realism, export."""

    #: Emitted with a :class:`ModalityRequest` to spawn (the Training view starts and lists it).
    train_requested = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("GeneratorView")
        self._datasets: list[dict[str, Any]] = []
        self._follow: tuple[Path, EventFollower, RunHistory] | None = None
        self.synthetic: Path | None = None
        self._realism_out: Path | None = None
        self._build_ui()
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self.poll)

    # -- UI ----------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        body = QWidget()
        bl = QVBoxLayout(body)
        top = QHBoxLayout()
        top.addWidget(self._build_train_box(), 1)
        top.addWidget(self._build_live_box(), 1)
        bl.addLayout(top)
        bl.addWidget(self._build_generate_box(), 1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(scroll)

    def _build_train_box(self) -> QGroupBox:
        train = QGroupBox("1. Train a generator")
        self.dataset_combo = QComboBox()
        self.dataset_combo.currentIndexChanged.connect(self._on_dataset_changed)
        self.genes = GeneSelector()
        self.genes.changed.connect(self._on_genes_changed)
        self.covariates_edit = QLineEdit()
        self.covariates_edit.setPlaceholderText("age,sex,stage")
        self.where_edit = QLineEdit()
        self.where_edit.setPlaceholderText("COL=VALUE, e.g. sample_type=tumour (optional)")
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(0, 100000)
        self.epochs_spin.setSpecialValueText("default")
        self.train_button = QPushButton("Train generator")
        self.train_button.clicked.connect(self.request_training)
        self.train_message = MessageLabel()
        tf = QFormLayout(train)
        tf.addRow("Matrix:", self.dataset_combo)
        tf.addRow("Genes:", self.genes)
        tf.addRow("Covariates:", self.covariates_edit)
        tf.addRow("Only samples with:", self.where_edit)
        tf.addRow("Epochs:", self.epochs_spin)
        tf.addRow("", self.train_button)
        tf.addRow("", self.train_message)
        return train

    def _build_live_box(self) -> QGroupBox:
        live = QGroupBox("Training: critic / generator losses and gamma on held-out samples")
        self.run_combo = QComboBox()
        self.run_combo.currentIndexChanged.connect(self._on_run_changed)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh_runs)
        self.run_status = QLabel()
        self.curves = PlotCanvas(min_height=220)
        self.curves.message("Choose or train a generator run")
        ll = QVBoxLayout(live)
        row = QHBoxLayout()
        row.addWidget(QLabel("Run:"))
        row.addWidget(self.run_combo, 1)
        row.addWidget(self.refresh_button)
        ll.addLayout(row)
        ll.addWidget(self.run_status)
        ll.addWidget(self.curves)
        return live

    def _build_generate_box(self) -> QGroupBox:
        gen = QGroupBox("2. Generate and check realism")
        self.n_spin = QSpinBox()
        self.n_spin.setRange(2, 1_000_000)
        self.n_spin.setValue(200)
        self.cov_form = QFormLayout()
        self.cov_edits: dict[str, QLineEdit] = {}
        self.generate_button = QPushButton("Generate")
        self.generate_button.clicked.connect(self.generate)
        self.export_button = QPushButton("Export synthetic table…")
        self.export_button.clicked.connect(self._on_export_clicked)
        self.export_button.setEnabled(False)
        self.runner = CliRunner()
        self.runner.finished.connect(self._on_runner_finished)
        self.runner.busy_changed.connect(lambda busy: self.generate_button.setEnabled(not busy))
        self.realism_label = QLabel()
        self.realism_label.setTextFormat(Qt.TextFormat.RichText)
        self.gallery = PngGallery(min_height=260)
        gl = QVBoxLayout(gen)
        nf = QFormLayout()
        nf.addRow("Profiles:", self.n_spin)
        gl.addLayout(nf)
        gl.addWidget(QLabel("Covariates (empty: drawn from the training samples):"))
        gl.addLayout(self.cov_form)
        brow = QHBoxLayout()
        brow.addWidget(self.generate_button)
        brow.addWidget(self.export_button)
        brow.addStretch(1)
        gl.addLayout(brow)
        gl.addWidget(self.runner)
        gl.addWidget(self.realism_label)
        gl.addWidget(self.gallery, 1)
        return gen

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt override)
        super().showEvent(event)
        self.reload_datasets()
        self.refresh_runs()
        self._timer.start()

    def hideEvent(self, event: Any) -> None:  # noqa: N802 (Qt override)
        super().hideEvent(event)
        self._timer.stop()

    # -- training ----------------------------------------------------------------------------------
    def reload_datasets(self, items: list[dict[str, Any]] | None = None) -> None:
        from gui.views.datasets_view import DatasetStore

        items = DatasetStore().items() if items is None else items
        current = (self.dataset_combo.currentData() or {}).get("path")
        self._datasets = [d for d in items if dataset_kind(d) == EXPRESSION_MATRIX and d.get("samples")]
        self.dataset_combo.blockSignals(True)
        self.dataset_combo.clear()
        for d in self._datasets:
            self.dataset_combo.addItem(d.get("name") or Path(d["path"]).name, d)
        idx = next((i for i, d in enumerate(self._datasets) if d["path"] == current), 0)
        self.dataset_combo.setCurrentIndex(idx)
        self.dataset_combo.blockSignals(False)
        self._on_dataset_changed()

    def _on_dataset_changed(self, *_a: Any) -> None:
        item = self.dataset_combo.currentData() or {}
        self.genes.set_dataset(item.get("path", ""), item.get("samples", ""))
        if item and not self.covariates_edit.text():
            cols = label_columns(item)
            self.covariates_edit.setText(",".join(c for c in cols if c.lower() in ("age", "sex", "gender", "stage")))

    def _on_genes_changed(self) -> None:
        # the DEG volcano plot, until a realism report replaces it
        if self.genes.deg_radio.isChecked() and self.genes.genes_path and self._realism_out is None:
            self.gallery.set_folder(Path(self.genes.genes_path).parent)

    def training_args(self, run: Path) -> list[str] | None:
        item = self.dataset_combo.currentData()
        if not item:
            self.train_message.show_message("Import an expression matrix with its sample table first.", "error")
            return None
        genes = self.genes.genes()
        if not genes:
            self.train_message.show_message("Choose a gene list, or select genes by differential expression.", "error")
            return None
        covs = [c for c in self.covariates_edit.text().split(",") if c.strip()]
        return wgan_train_args(item["path"], item["samples"], genes, covs, run, self.where_edit.text(),
                               self.epochs_spin.value())

    def request_training(self) -> ModalityRequest | None:
        """Ask for a generator run (the Training view spawns it); this view follows it."""
        item = self.dataset_combo.currentData() or {}
        run = new_run_dir(f"wgan-{item.get('name', 'matrix')}")
        args = self.training_args(run)
        if args is None:
            return None
        request = ModalityRequest("wgan", tuple(args), run)
        self.train_message.show_message(f"Started {run.name}.", "ok")
        self.train_requested.emit(request)
        self.refresh_runs(select=run)
        return request

    # -- following ---------------------------------------------------------------------------------
    def refresh_runs(self, select: Path | None = None) -> None:
        current = select or self.run_combo.currentData()
        runs = [r for r in list_runs(runs_dir()) if str(r.config.get("kind")) == "wgan" or
                (select is not None and r.path == select)]
        paths = [r.path for r in runs]
        if select is not None and select not in paths:
            paths.insert(0, select)
        self.run_combo.blockSignals(True)
        self.run_combo.clear()
        for p in paths:
            self.run_combo.addItem(p.name, p)
        idx = next((i for i, p in enumerate(paths) if current is not None and p == Path(current)), 0)
        self.run_combo.setCurrentIndex(idx)
        self.run_combo.blockSignals(False)
        self._on_run_changed()

    def select_run(self, run: str | Path) -> None:
        self.refresh_runs(select=Path(run))

    def current_run(self) -> Path | None:
        data = self.run_combo.currentData()
        return Path(data) if data else None

    def _on_run_changed(self, *_a: Any) -> None:
        run = self.current_run()
        if run is None:
            self._follow = None
            self._set_covariates([])
            return
        if self._follow is None or self._follow[0] != run:
            self._follow = (run, EventFollower(run), RunHistory())
            self.curves.message("Waiting for the first epoch…")
        cfg = read_json(run / "config.json").get("config", {})
        self._set_covariates(list(cfg.get("covariates") or []))
        self.poll()

    def _set_covariates(self, names: list[str]) -> None:
        if list(self.cov_edits) == names:
            return
        while self.cov_form.rowCount():
            self.cov_form.removeRow(0)
        self.cov_edits = {}
        for name in names:
            edit = QLineEdit()
            edit.setPlaceholderText("from the training samples")
            self.cov_edits[name] = edit
            self.cov_form.addRow(f"{name}:", edit)

    def history(self) -> RunHistory | None:
        return self._follow[2] if self._follow else None

    def poll(self) -> None:
        """Read the followed run's new events and redraw its curves."""
        if self._follow is None:
            return
        run, follower, history = self._follow
        events = follower.read_new()
        if follower.restarted:
            history.clear()
        history.apply_all(events)
        info = run_info(run)
        gamma = history.latest("val_gamma") or history.latest("gamma")
        self.run_status.setText(
            f"{html.escape(info.status)} · epoch {history.epoch}/{history.epochs or '?'}"
            + (f" · gamma {gamma:.3f}" if gamma is not None else ""))
        if events:
            draw_curves(self.curves, history)
        ready = (run / "model.onnx").is_file() or info.status == "finished"
        self.generate_button.setEnabled(ready and not self.runner.busy)

    # -- generating --------------------------------------------------------------------------------
    def covariate_values(self) -> dict[str, str]:
        return {k: e.text().strip() for k, e in self.cov_edits.items() if e.text().strip()}

    def generate(self) -> Any:
        run = self.current_run()
        if run is None:
            self.runner.message.show_message("Choose a generator run first.", "error")
            return None
        out = results_dir("generate", run)
        self.synthetic = out / "synthetic.tsv"
        self._realism_out = out / "realism"
        values = self.covariate_values()
        n = self.n_spin.value()
        args = ["expression", "generate", str(run), "--n", str(n)]
        if values:
            # fixed values; covariates left empty are drawn from the training samples
            args += ["--set", ",".join(f"{k}={v}" for k, v in values.items())]
        args += ["--out", str(self.synthetic)]
        self.export_button.setEnabled(False)
        return self.runner.start("generate", args, f"Generating {n} profiles…")

    def _on_runner_finished(self, tag: str, _result: Any) -> None:
        if tag == "generate":
            self.export_button.setEnabled(self.synthetic is not None and self.synthetic.is_file())
            self.realism()
        elif tag == "realism" and self._realism_out is not None:
            self.show_realism(self._realism_out)

    def realism(self) -> Any:
        run = self.current_run()
        if run is None or self.synthetic is None or self._realism_out is None:
            return None
        cfg = read_json(run / "config.json").get("config", {})
        matrix = cfg.get("matrix") or (self.dataset_combo.currentData() or {}).get("path", "")
        samples = cfg.get("samples") or (self.dataset_combo.currentData() or {}).get("samples", "")
        args = ["expression", "realism", "--real", str(matrix), "--synthetic", str(self.synthetic)]
        if samples:
            args += ["--samples", str(samples)]
        if cfg.get("genes"):
            args += ["--genes", str(cfg["genes"])]
        if run.is_dir():
            # compared on the run's held-out real samples, the baseline fitted on its training samples
            args += ["--run", str(run)]
        args += ["--out", str(self._realism_out)]
        return self.runner.start("realism", args, "Comparing with real samples…")

    def show_realism(self, out: Path) -> None:
        self.realism_label.setText(metrics_table_html(read_json(out / "metrics.json")))
        self.gallery.set_folder(out)

    def _on_export_clicked(self) -> None:
        if self.synthetic is None or not self.synthetic.is_file():
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export synthetic profiles", "synthetic.tsv", "TSV (*.tsv)")
        if path:
            self.export_synthetic(Path(path))

    def export_synthetic(self, dest: Path) -> bool:
        try:
            shutil.copyfile(self.synthetic, dest)  # type: ignore[arg-type]
        except OSError as exc:
            self.runner.message.show_message(f"Cannot export: {exc.strerror or exc}", "error")
            return False
        self.runner.message.show_message(f"✓ Exported {dest}", "ok")
        return True
