"""Widgets for slide-level (MIL) prediction: the clinical values form and the class probabilities."""

from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QDoubleValidator, QFont, QFontMetrics, QPainter, QPaintEvent
from PySide6.QtWidgets import QComboBox, QFormLayout, QLabel, QLineEdit, QSizePolicy, QWidget

from gui.mil_job import ClinicalField

MISSING_TEXT = "(not known)"
PREDICTED_COLOUR = QColor(198, 40, 40)
OTHER_COLOUR = QColor(144, 164, 174)


class ClinicalForm(QWidget):
    """One input per clinical column of a MIL model; a blank input means "missing".

    Numeric columns take a number (the placeholder says what a blank becomes), categorical ones
    offer the training categories plus "(not known)"; an unseen category can be typed in.
    """

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._form = QFormLayout(self)
        self._form.setContentsMargins(0, 0, 0, 0)
        self._inputs: dict[str, QLineEdit | QComboBox] = {}

    def set_fields(self, fields: tuple[ClinicalField, ...] | list[ClinicalField]) -> None:
        """Rebuild the form for a model's clinical columns (an empty list: image-only model)."""
        while self._form.rowCount():
            self._form.removeRow(0)
        self._inputs = {}
        if not fields:
            note = QLabel("This model uses the slide image only.")
            note.setStyleSheet("color: #607d8b;")
            self._form.addRow(note)
            return
        for f in fields:
            if f.kind == "numeric":
                edit = QLineEdit()
                validator = QDoubleValidator(edit)
                validator.setNotation(QDoubleValidator.Notation.StandardNotation)
                edit.setValidator(validator)
                if f.median is not None:
                    edit.setPlaceholderText(f"blank: training median {f.median:g}")
                edit.textChanged.connect(self.changed)
                widget: QLineEdit | QComboBox = edit
            else:
                combo = QComboBox()
                combo.setEditable(True)
                combo.addItem(MISSING_TEXT, "")
                for c in f.categories:
                    combo.addItem(c, c)
                combo.setToolTip("A value not seen in training is used as 'unknown'")
                combo.currentTextChanged.connect(self.changed)
                widget = combo
            widget.setObjectName(f"clinical-{f.name}")
            self._inputs[f.name] = widget
            self._form.addRow(f"{f.name}:", widget)

    @property
    def names(self) -> list[str]:
        return list(self._inputs)

    def set_value(self, name: str, value: str) -> None:
        """Fill one input ("" = missing)."""
        w = self._inputs[name]
        if isinstance(w, QLineEdit):
            w.setText(value)
        else:
            i = w.findData(value) if value else 0
            if i >= 0:
                w.setCurrentIndex(i)
            else:
                w.setEditText(value)

    def values(self) -> dict[str, str]:
        """The values entered, by column; blank inputs are left out (the model treats them as
        missing)."""
        out: dict[str, str] = {}
        for name, w in self._inputs.items():
            if isinstance(w, QLineEdit):
                text = w.text().strip()
            else:
                text = w.currentText().strip()
                text = "" if text == MISSING_TEXT else text
            if text:
                out[name] = text
        return out


class ClassProbabilities(QWidget):
    """A small bar list: one row per class with its probability; the predicted class is drawn
    bold with a strong colour, the others in grey."""

    ROW_H = 22

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._rows: list[tuple[str, float]] = []
        self._predicted = -1
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def set_probabilities(self, class_names: list[str] | tuple[str, ...], probabilities: list[float]) -> None:
        self._rows = [(str(n), float(p)) for n, p in zip(class_names, probabilities, strict=True)]
        self._predicted = max(range(len(self._rows)), key=lambda i: self._rows[i][1]) if self._rows else -1
        self.setFixedHeight(max(1, len(self._rows)) * self.ROW_H + 4)
        self.setToolTip("\n".join(f"{n}: {p:.1%}" for n, p in self._rows))
        self.update()

    def clear(self) -> None:
        self.set_probabilities([], [])

    @property
    def predicted(self) -> str:
        return self._rows[self._predicted][0] if self._predicted >= 0 else ""

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return QSize(240, max(1, len(self._rows)) * self.ROW_H + 4)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        base = QFont(self.font())
        bold = QFont(base)
        bold.setBold(True)
        fm = QFontMetrics(bold)
        label_w = max((fm.horizontalAdvance(n) for n, _ in self._rows), default=0) + 10
        value_w = fm.horizontalAdvance("100.0%") + 8
        bar_w = max(20.0, self.width() - label_w - value_w - 4)
        for i, (name, prob) in enumerate(self._rows):
            top = 2 + i * self.ROW_H
            predicted = i == self._predicted
            p.setFont(bold if predicted else base)
            p.setPen(QColor(33, 33, 33) if predicted else QColor(96, 105, 112))
            text_rect = QRectF(0, top, label_w, self.ROW_H)
            p.drawText(text_rect, int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), name)
            track = QRectF(label_w, top + 5, bar_w, self.ROW_H - 10)
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(QColor(236, 239, 241))
            p.drawRoundedRect(track, 3, 3)
            p.setBrush(PREDICTED_COLOUR if predicted else OTHER_COLOUR)
            p.drawRoundedRect(QRectF(track.x(), track.y(), max(2.0, bar_w * min(1.0, max(0.0, prob))), track.height()),
                              3, 3)
            p.setPen(QColor(33, 33, 33) if predicted else QColor(96, 105, 112))
            p.drawText(QRectF(label_w + bar_w + 4, top, value_w, self.ROW_H),
                       int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter), f"{prob:.1%}")
        p.end()
