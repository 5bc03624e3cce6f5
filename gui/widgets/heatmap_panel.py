"""HeatmapPanel: model choice, Run/Cancel with progress and ETA, overlay controls, the slide-level
result and the most suspicious regions. Widgets only; the slide view wires them to the engine."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QIcon, QImage, QPainter, QPaintEvent, QPixmap, QResizeEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLayout,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from gui.icons import icon
from gui.widgets.heatmap_overlay import COLORMAPS, colormap_color, colormap_lut
from gui.widgets.mil_widgets import ClassProbabilities, ClinicalForm

BROWSE = "__browse__"


def format_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "estimating…"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s left"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m} min {s:02d} s left"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min left"


class ColorBar(QWidget):
    """A horizontal colour scale 0-1 for the current colormap, washed out below the threshold."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFixedHeight(14)
        self.setMinimumWidth(60)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self._cmap, self._threshold = "heat", 0.5

    def set_scale(self, cmap: str, threshold: float) -> None:
        self._cmap, self._threshold = cmap, threshold
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt API
        w, h = max(2, self.width()), self.height()
        lut = colormap_lut(self._cmap)
        row = lut[np.linspace(0, 255, w).astype(np.int64)].copy()
        below = np.linspace(0, 1, w) < self._threshold
        row[below] = (row[below] * 0.25 + 200 * 0.75).astype(np.uint8)  # not drawn on the slide
        img = np.ascontiguousarray(np.repeat(row[None], h, axis=0))
        p = QPainter(self)
        p.drawImage(0, 0, QImage(img.data, w, h, 3 * w, QImage.Format.Format_RGB888))
        p.setPen(QColor(150, 150, 150))
        p.drawRect(0, 0, w - 1, h - 1)
        p.end()


class WrappingLabel(QLabel):
    """A word-wrapped rich-text label that keeps the height its text needs at its current width
    (inside a scroll area a plain wrapped label can be squeezed and cut off)."""

    def hasHeightForWidth(self) -> bool:  # noqa: N802 - Qt API
        # the layouts use the minimum height kept below instead: a height-for-width child makes
        # the boxes around it (and the scroll area) size themselves for the wrong width
        return False

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        self._fit_height()

    def setText(self, text: str) -> None:  # noqa: N802 - Qt API
        super().setText(text)
        self._fit_height()

    def _fit_height(self) -> None:
        needed = self.heightForWidth(max(1, self.width()))
        if needed > 0 and needed != self.minimumHeight():
            self.setMinimumHeight(needed)
            # enclosing boxes cache their minimum size in their parents' layouts: refresh them
            # once this layout pass is over (a request made during the pass is lost)
            QTimer.singleShot(0, self._notify_parents)

    def _notify_parents(self) -> None:
        w = self.parentWidget()
        while w is not None and not w.isWindow():
            w.updateGeometry()
            w = w.parentWidget()


class HeatmapPanel(QWidget):
    """Controls for computing and displaying a heatmap, or a slide-level (MIL) prediction with its
    attention map (:meth:`set_mode`): the same overlay controls serve both."""

    run_requested = Signal()
    cancel_requested = Signal()
    model_changed = Signal(str)  # path, or BROWSE when the user picked "Browse…"
    overlay_settings_changed = Signal()
    region_activated = Signal(int)  # index into the regions list

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        root = QVBoxLayout(self)
        root.setContentsMargins(0, 0, 0, 0)
        root.setSpacing(8)
        # never squeeze the boxes below what their text needs: the scroll area around scrolls
        root.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)

        run_box = QGroupBox("Model")
        run_layout = QVBoxLayout(run_box)
        self.model_combo = QComboBox()
        self.model_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model_combo.setMinimumContentsLength(16)
        self.model_combo.activated.connect(self._on_model_combo_activated)
        run_layout.addWidget(self.model_combo)
        self.model_info = QLabel("")
        self.model_info.setWordWrap(True)
        self.model_info.setStyleSheet("color: #546e7a;")
        run_layout.addWidget(self.model_info)
        buttons = QHBoxLayout()
        self.run_button = QPushButton(icon("run"), "Run Heatmap")
        self.run_button.setToolTip("Compute the tumour-probability heatmap of this slide with the chosen model")
        self.run_button.clicked.connect(self.run_requested)
        self.cancel_button = QPushButton(icon("stop"), "Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_requested)
        buttons.addWidget(self.run_button, 1)
        buttons.addWidget(self.cancel_button)
        run_layout.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        run_layout.addWidget(self.progress)
        self.progress_label = QLabel("No heatmap yet.")
        self.progress_label.setWordWrap(True)
        run_layout.addWidget(self.progress_label)
        root.addWidget(run_box)

        self.clinical_box = QGroupBox("Clinical data")
        clinical_layout = QVBoxLayout(self.clinical_box)
        hint = QLabel("Values this model uses. Leave a field blank when it is not known.")
        hint.setWordWrap(True)
        hint.setStyleSheet("color: #607d8b;")
        clinical_layout.addWidget(hint)
        self.clinical_form = ClinicalForm()
        clinical_layout.addWidget(self.clinical_form)
        self.clinical_box.setVisible(False)
        root.addWidget(self.clinical_box)

        overlay_box = QGroupBox("Overlay")
        form = QFormLayout(overlay_box)
        self.show_check = QCheckBox("Show heatmap")
        self.show_check.setChecked(True)
        self.show_check.toggled.connect(self.overlay_settings_changed)
        form.addRow(self.show_check)
        self.cmap_combo = QComboBox()
        for name in COLORMAPS:
            pix = QPixmap(QSize(28, 12))
            pix.fill(colormap_color(name, 0.8))
            self.cmap_combo.addItem(QIcon(pix), name, name)
        self.cmap_combo.currentIndexChanged.connect(self.overlay_settings_changed)
        form.addRow("Colours:", self.cmap_combo)
        self.opacity_slider = self._slider(0, 100, 50, "Opacity of the heatmap over the slide")
        self.opacity_label = QLabel("50%")
        form.addRow("Opacity:", self._with_label(self.opacity_slider, self.opacity_label))
        self.threshold_slider = self._slider(0, 100, 50, "Tiles below this probability are not coloured")
        self.threshold_label = QLabel("0.50")
        form.addRow("Threshold:", self._with_label(self.threshold_slider, self.threshold_label))
        self.color_bar = ColorBar()
        scale = QVBoxLayout()
        scale.setSpacing(1)
        scale.addWidget(self.color_bar)
        ticks = QHBoxLayout()
        for text, align in (("0", Qt.AlignmentFlag.AlignLeft), ("0.5", Qt.AlignmentFlag.AlignCenter),
                            ("1", Qt.AlignmentFlag.AlignRight)):
            lab = QLabel(text)
            lab.setStyleSheet("color: #607d8b; font-size: 8pt;")
            lab.setAlignment(align)
            ticks.addWidget(lab, 1)
        scale.addLayout(ticks)
        self._scale_field = self._wrap(scale)
        form.addRow("Probability:", self._scale_field)
        self._overlay_form = form

        self.result_box = result_box = QGroupBox("Slide result")
        result_layout = QVBoxLayout(result_box)
        self.class_bars = ClassProbabilities()
        self.class_bars.setVisible(False)
        result_layout.addWidget(self.class_bars)
        self.summary_label = WrappingLabel("Run a heatmap to see the slide-level result.")
        self.summary_label.setWordWrap(True)
        self.summary_label.setTextFormat(Qt.TextFormat.RichText)
        self.summary_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        result_layout.addWidget(self.summary_label)
        root.addWidget(result_box)

        self.regions_box = regions_box = QGroupBox("Most suspicious regions")
        regions_layout = QVBoxLayout(regions_box)
        self.regions_list = QListWidget()
        self.regions_list.setToolTip("Click a region to go there")
        self.regions_list.setMinimumHeight(150)
        self.regions_list.itemClicked.connect(self._on_regions_list_item_clicked)
        self.regions_list.itemActivated.connect(self._on_regions_list_item_clicked)
        regions_layout.addWidget(self.regions_list)
        root.addWidget(regions_box, 1)
        root.addWidget(overlay_box)  # read the result first; display settings come last

        self.opacity_slider.valueChanged.connect(self._on_slider_value_changed)
        self.threshold_slider.valueChanged.connect(self._on_slider_value_changed)
        self.set_running(False)
        self._on_slider_value_changed()

    # -- small builders ---------------------------------------------------------------------
    def _slider(self, lo: int, hi: int, value: int, tip: str) -> QSlider:
        s = QSlider(Qt.Orientation.Horizontal)
        s.setRange(lo, hi)
        s.setValue(value)
        s.setToolTip(tip)
        return s

    def _with_label(self, slider: QSlider, label: QLabel) -> QWidget:
        label.setMinimumWidth(36)
        label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        box = QHBoxLayout()
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(slider, 1)
        box.addWidget(label)
        return self._wrap(box)

    def _wrap(self, layout: QHBoxLayout | QVBoxLayout) -> QWidget:
        w = QWidget()
        layout.setContentsMargins(0, 0, 0, 0)
        w.setLayout(layout)
        return w

    # -- model list -------------------------------------------------------------------------
    def set_models(self, models: list[tuple[str, str, str]], selected: str = "") -> None:
        """Fill the model list with ``(display name, path, tooltip)`` and a Browse entry."""
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for name, path, tip in models:
            self.model_combo.addItem(icon("models"), name, path)
            self.model_combo.setItemData(self.model_combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.model_combo.addItem(icon("open"), "Browse for an .onnx model…", BROWSE)
        index = self.model_combo.findData(selected) if selected else -1
        self.model_combo.setCurrentIndex(index if index >= 0 else 0)
        self.model_combo.blockSignals(False)
        self.run_button.setEnabled(bool(self.current_model()) and not self.cancel_button.isEnabled())

    def current_model(self) -> str:
        path = self.model_combo.currentData()
        return "" if path in (None, BROWSE) else str(path)

    def add_and_select_model(self, name: str, path: str, tip: str = "") -> None:
        index = self.model_combo.findData(path)
        if index < 0:
            if self.model_combo.findData(BROWSE) < 0:
                self.model_combo.addItem(icon("open"), "Browse for an .onnx model…", BROWSE)
            index = self.model_combo.findData(BROWSE)  # new models go just above "Browse…"
            self.model_combo.insertItem(index, icon("models"), name, path)
            self.model_combo.setItemData(index, tip or path, Qt.ItemDataRole.ToolTipRole)
        self.model_combo.setCurrentIndex(index)

    def _on_model_combo_activated(self, index: int) -> None:
        data = self.model_combo.itemData(index)
        self.model_changed.emit(BROWSE if data == BROWSE else str(data or ""))

    # -- mode -------------------------------------------------------------------------------
    @property
    def mil_mode(self) -> bool:
        return self.clinical_box.isVisibleTo(self)

    def set_mode(self, mil: bool) -> None:
        """Heatmap controls (patch classifier) or slide-level prediction controls (MIL model)."""
        self.clinical_box.setVisible(mil)
        self.class_bars.setVisible(mil and bool(self.class_bars.predicted))
        if mil:
            self.run_button.setText("Predict Slide")
            self.run_button.setToolTip("Predict the slide-level class with the chosen model and show which "
                                       "regions drove the call")
            self.show_check.setText("Show attention map")
            self.threshold_slider.setToolTip("Tiles with less attention (relative to the most) are not coloured")
            self.result_box.setTitle("Slide-level prediction")
            self.regions_box.setTitle("Highest-attention regions")
        else:
            self.run_button.setText("Run Heatmap")
            self.run_button.setToolTip("Compute the tumour-probability heatmap of this slide with the chosen model")
            self.show_check.setText("Show heatmap")
            self.threshold_slider.setToolTip("Tiles below this probability are not coloured")
            self.result_box.setTitle("Slide result")
            self.regions_box.setTitle("Most suspicious regions")
        label = self._overlay_form.labelForField(self._scale_field)
        if isinstance(label, QLabel):
            label.setText("Attention:" if mil else "Probability:")

    def set_class_probabilities(self, class_names: list[str] | tuple[str, ...] | None,
                                probabilities: list[float] | None) -> None:
        """Show (or, with None, clear) the bar list of a slide-level prediction."""
        if class_names is None or probabilities is None:
            self.class_bars.clear()
            self.class_bars.setVisible(False)
            return
        self.class_bars.set_probabilities(class_names, probabilities)
        self.class_bars.setVisible(True)

    # -- run state --------------------------------------------------------------------------
    def set_running(self, running: bool) -> None:
        self.progress.setVisible(running)
        self.run_button.setEnabled(not running and bool(self.current_model()))
        self.cancel_button.setEnabled(running)
        self.model_combo.setEnabled(not running)

    def set_progress(self, fraction: float | None, text: str) -> None:
        if fraction is None:
            self.progress.setRange(0, 0)  # busy indicator while the total is unknown
            self.progress.setFormat("")
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(round(fraction * 1000)))
            self.progress.setFormat(f"{fraction * 100:.0f}%")
        self.progress_label.setText(text)

    def reset_progress(self, text: str) -> None:
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.progress_label.setText(text)

    # -- overlay settings -------------------------------------------------------------------
    @property
    def opacity(self) -> float:
        return self.opacity_slider.value() / 100.0

    @property
    def threshold(self) -> float:
        return self.threshold_slider.value() / 100.0

    @property
    def colormap(self) -> str:
        return str(self.cmap_combo.currentData())

    @property
    def overlay_visible(self) -> bool:
        return self.show_check.isChecked()

    def set_overlay_settings(self, colormap: str, opacity: float, threshold: float, visible: bool) -> None:
        index = self.cmap_combo.findData(colormap)
        self.cmap_combo.setCurrentIndex(index if index >= 0 else 0)
        self.opacity_slider.setValue(int(round(opacity * 100)))
        self.threshold_slider.setValue(int(round(threshold * 100)))
        self.show_check.setChecked(visible)

    def _on_slider_value_changed(self) -> None:
        self.opacity_label.setText(f"{self.opacity_slider.value()}%")
        self.threshold_label.setText(f"{self.threshold:.2f}")
        self.color_bar.set_scale(self.colormap, self.threshold)
        self.overlay_settings_changed.emit()

    def refresh_color_bar(self) -> None:
        self.color_bar.set_scale(self.colormap, self.threshold)

    # -- results ----------------------------------------------------------------------------
    def set_summary_html(self, html: str) -> None:
        self.summary_label.setText(html)

    def set_regions(self, rows: list[tuple[float, str]], value_name: str = "p =",
                    empty_text: str = "No regions yet.") -> None:
        """``(value, description)`` per region, highest first; ``value_name`` prefixes the value."""
        self.regions_list.clear()
        for i, (prob, text) in enumerate(rows):
            pix = QPixmap(QSize(12, 12))
            pix.fill(colormap_color(self.colormap, prob))
            item = QListWidgetItem(QIcon(pix), f"{i + 1}.  {value_name} {prob:.2f}   {text}")
            item.setData(Qt.ItemDataRole.UserRole, i)
            self.regions_list.addItem(item)
        if not rows:
            item = QListWidgetItem(empty_text)
            item.setFlags(Qt.ItemFlag.NoItemFlags)
            item.setForeground(QColor(120, 120, 120))
            self.regions_list.addItem(item)

    def _on_regions_list_item_clicked(self, item: QListWidgetItem) -> None:
        index = item.data(Qt.ItemDataRole.UserRole)
        if index is not None:
            self.region_activated.emit(int(index))


def model_tooltip(path: str | Path, description: str) -> str:
    return f"{description}\n{path}" if description else str(path)
