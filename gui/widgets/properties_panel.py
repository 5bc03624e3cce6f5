"""PropertiesPanel: what the file says about the slide (vendor, size, levels, resolution)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFormLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from engine.slides.base import SlideInfo
from gui.icons import icon


def _fmt_mpp(info: SlideInfo) -> str:
    if info.mpp is None:
        return "not recorded"
    mx, my = info.mpp
    text = f"{mx:.4f} µm/px" if abs(mx - my) < 1e-4 else f"{mx:.4f} x {my:.4f} µm/px"
    if getattr(info, "mpp_from_user", False):
        text += " (entered by user)"
    return text


class PropertiesPanel(QWidget):
    """A form of slide properties and a guarded button for label/macro images."""

    associated_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._form = QFormLayout()
        self._form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        self._form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.fields: dict[str, QLabel] = {}
        for key in ("File", "Folder", "Format", "Size", "Levels", "Resolution", "Objective", "Other images"):
            value = QLabel("–")
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            value.setWordWrap(True)
            self._form.addRow(f"{key}:", value)
            self.fields[key] = value
        layout.addLayout(self._form)
        self.associated_button = QPushButton(icon("label"), "Show Label and Macro Images…")
        self.associated_button.setToolTip(
            "Label and macro images can show patient identifiers; they are hidden unless you ask."
        )
        self.associated_button.clicked.connect(self.associated_requested)
        layout.addWidget(self.associated_button)
        layout.addStretch(1)
        self.set_info(None)

    def set_info(self, info: SlideInfo | None) -> None:
        if info is None:
            for label in self.fields.values():
                label.setText("–")
            self.associated_button.setEnabled(False)
            return
        path = Path(info.path) if info.path else None
        self.fields["File"].setText(path.name if path else "(in memory)")
        self.fields["Folder"].setText(str(path.parent) if path else "–")
        self.fields["Format"].setText(info.vendor)
        w, h = info.dimensions
        self.fields["Size"].setText(f"{w:,} x {h:,} px")
        self.fields["Levels"].setText(
            f"{info.level_count} (downsamples {', '.join(f'{d:g}' for d in info.level_downsamples)})"
        )
        self.fields["Resolution"].setText(_fmt_mpp(info))
        if info.mpp is not None:
            mpp = info.mpp_or(None)
            self.fields["Size"].setText(f"{w:,} x {h:,} px ({w * mpp / 1000:.1f} x {h * mpp / 1000:.1f} mm)")
        self.fields["Objective"].setText(f"{info.objective_power:g}x" if info.objective_power else "not recorded")
        n = len(info.associated_images)
        self.fields["Other images"].setText(f"{n} hidden (label, macro, …)" if n else "none")
        self.associated_button.setEnabled(n > 0)
