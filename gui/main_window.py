"""MainWindow: a navigation bar on the left hosting the app's views, menus, status bar."""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QSize, Signal
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QIcon, QKeySequence
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMenu,
    QMessageBox,
    QScrollArea,
    QStackedWidget,
    QWidget,
)

from engine import __version__
from engine.edition import training_available
from gui.icons import app_icon, icon
from gui.settings import Settings
from gui.views.slide_view import SlideView
from gui.workers import Worker

NAV_WIDTH = 148


class MainWindow(QMainWindow):
    """The application window. Other views register with :meth:`add_view`."""

    view_added = Signal(str)

    def __init__(self, settings: Settings | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings or Settings()
        self.setWindowTitle("MetaScope")
        self.setWindowIcon(app_icon())
        self.setAcceptDrops(True)
        self._views: dict[str, QWidget] = {}

        central = QWidget(self)
        layout = QHBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        self.nav = QListWidget(central)
        self.nav.setObjectName("navigation")
        self.nav.setFixedWidth(NAV_WIDTH)
        self.nav.setIconSize(QSize(22, 22))
        self.nav.setFrameShape(QListWidget.Shape.NoFrame)
        self.nav.setStyleSheet(
            "QListWidget#navigation { background: #263238; color: #eceff1; padding-top: 8px; font-size: 10.5pt;"
            " outline: 0; }"
            "QListWidget#navigation::item { padding: 9px 10px; border-left: 3px solid transparent; }"
            "QListWidget#navigation::item:selected { background: #37474f; color: white;"
            " border-left: 3px solid #ff7043; }"
            "QListWidget#navigation::item:hover:!selected { background: #2f3d44; }"
        )
        self.stack = QStackedWidget(central)
        layout.addWidget(self.nav)
        layout.addWidget(self.stack, 1)
        self.setCentralWidget(central)
        self.nav.currentRowChanged.connect(self.stack.setCurrentIndex)

        self.slide_view = SlideView(self.settings, self)
        self._build_menus()
        self._build_status_bar()
        self.add_view("Slides", icon("slides"), self.slide_view)
        self.slide_view.status_message.connect(self._on_slide_view_status_message)
        self.slide_view.slide_opened.connect(self._on_slide_view_slide_opened)
        self.slide_view.slide_open_failed.connect(self._on_slide_view_slide_open_failed)
        self.slide_view.hover_text_changed.connect(self.hover_label.setText)
        self.slide_view.zoom_text_changed.connect(self.zoom_label.setText)
        self._add_training_views()
        self._restore_geometry()

    # -- views -----------------------------------------------------------------------------
    def _add_training_views(self) -> None:
        """Datasets, Training and Models: the train-from-a-wizard journey.

        The viewer edition (no PyTorch) cannot train: it gets no Training view and no way into the
        training wizard, while Datasets (inspection) and Models (the library) stay.
        """
        from gui.views.datasets_view import DatasetsView
        from gui.views.models_view import ModelsView

        self.training_enabled = training_available()
        self.datasets_view = DatasetsView(self)
        self.training_view = None
        self.models_view = ModelsView(self)
        self.add_view("Datasets", icon("datasets"), self.datasets_view, scrollable=True)
        if self.training_enabled:
            from gui.views.training_view import TrainingView

            self.training_view = TrainingView(self)
            self.add_view("Training", icon("training"), self.training_view)
            self.datasets_view.train_requested.connect(self._on_datasets_view_train_requested)
            # a model added to the library is selectable in the slide viewer at once
            self.training_view.library_changed.connect(self.slide_view.refresh_models)
            self.training_view.library_changed.connect(self.models_view.refresh)
        else:
            self.datasets_view.set_training_available(False)
        self.add_view("Models", icon("models"), self.models_view)
        self.models_view.library_changed.connect(self.slide_view.refresh_models)
        self._add_patch_review_view()
        from gui.modality_views import add_modality_views

        add_modality_views(self)  # Samples and Generator (genomics / expression)

    def _add_patch_review_view(self) -> None:
        """Patch review: an evaluation's patches, errors first (File > Review Evaluation…)."""
        from gui.views.patch_review_view import PatchReviewView

        self.patch_review_view = PatchReviewView(self)
        self.add_view("Patch review", icon("label"), self.patch_review_view)
        action = QAction(icon("label"), "Review &Evaluation…", self)
        action.setStatusTip("The patches of a `metascope evaluate` folder, false positives and negatives first")
        action.triggered.connect(lambda: (self.show_view("Patch review"), self.patch_review_view.open_dialog()))
        actions = self.file_menu.actions()  # after Open Slide / Open Recent, before the first separator
        after_recent = actions[actions.index(self.recent_menu.menuAction()) + 1]
        self.file_menu.insertAction(after_recent, action)
        self.models_view.review_patches_requested.connect(self.review_evaluation)
        if self.training_view is not None:
            self.training_view.review_patches_requested.connect(self.review_evaluation)

    def review_evaluation(self, path: str | os.PathLike[str]) -> Worker:
        """Show the Patch review view with the evaluation at ``path`` (read in a worker)."""
        self.show_view("Patch review")
        return self.patch_review_view.load(path)

    def open_pn_stage_dialog(self) -> QWidget:
        """Show the pN stage dialog (File > pN Stage of a Heatmap Folder…); one per window."""
        from gui.pn_stage_dialog import PnStageDialog

        dialog = self.findChild(PnStageDialog)
        if dialog is None:
            dialog = PnStageDialog(self.settings, self)
        dialog.show()
        dialog.raise_()
        dialog.activateWindow()
        return dialog

    def _on_datasets_view_train_requested(self, dataset: dict) -> None:
        if self.training_view is None:
            return
        self.show_view("Training")
        self.training_view.open_wizard(dataset=dataset)

    def add_view(self, name: str, view_icon: QIcon, widget: QWidget, scrollable: bool = False) -> int:
        """Add a view to the navigation bar and the Go menu; returns its index.

        ``scrollable`` puts a dense view in a scroll area, so its minimum size never forces the
        window past a small laptop screen (1366 x 768).
        """
        if name in self._views:
            raise ValueError(f"a view named {name!r} is already registered")
        self._views[name] = widget
        page = widget
        if scrollable:
            page = QScrollArea()
            page.setWidgetResizable(True)
            page.setFrameShape(QScrollArea.Shape.NoFrame)
            page.setWidget(widget)
        index = self.stack.addWidget(page)
        item = QListWidgetItem(view_icon, name)
        item.setSizeHint(QSize(NAV_WIDTH, 42))
        self.nav.addItem(item)
        action = QAction(view_icon, name, self)
        action.triggered.connect(lambda _checked=False, n=name: self.show_view(n))
        self.go_menu.addAction(action)
        if self.nav.currentRow() < 0:
            self.nav.setCurrentRow(0)
        self.view_added.emit(name)
        return index

    def view(self, name: str) -> QWidget:
        return self._views[name]

    def view_names(self) -> list[str]:
        return list(self._views)

    def show_view(self, name: str) -> None:
        self.nav.setCurrentRow(list(self._views).index(name))

    # -- menus -----------------------------------------------------------------------------
    def _build_menus(self) -> None:
        mb = self.menuBar()
        file_menu = self.file_menu = mb.addMenu("&File")
        self.open_action = QAction(icon("open"), "&Open Slide…", self)
        self.open_action.setShortcut(QKeySequence.StandardKey.Open)
        self.open_action.triggered.connect(self.slide_view.open_dialog)
        file_menu.addAction(self.open_action)
        self.recent_menu = QMenu("Open &Recent", self)
        self.recent_menu.aboutToShow.connect(self._rebuild_recent_menu)
        file_menu.addMenu(self.recent_menu)
        file_menu.addSeparator()
        file_menu.addAction(self.slide_view.export_action)
        self.pn_stage_action = QAction(icon("label"), "&pN Stage of a Heatmap Folder…", self)
        self.pn_stage_action.setStatusTip("Each patient's pN category from a heatmap folder (one slide per lymph node)")
        self.pn_stage_action.triggered.connect(self.open_pn_stage_dialog)
        file_menu.addAction(self.pn_stage_action)
        file_menu.addSeparator()
        quit_action = QAction("&Quit", self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.setMenuRole(QAction.MenuRole.QuitRole)
        quit_action.triggered.connect(self.close)
        file_menu.addAction(quit_action)

        view_menu = mb.addMenu("&View")
        for action in self.slide_view.view_actions():
            if action is None:
                view_menu.addSeparator()
            else:
                view_menu.addAction(action)
        view_menu.addSeparator()
        self.go_menu = view_menu.addMenu("&Go To")

        help_menu = mb.addMenu("&Help")
        about = QAction("&About MetaScope", self)
        about.setMenuRole(QAction.MenuRole.AboutRole)
        about.triggered.connect(self.show_about)
        help_menu.addAction(about)

    def _rebuild_recent_menu(self) -> None:
        self.recent_menu.clear()
        recent = self.settings.recent_files()
        for path in recent:
            action = self.recent_menu.addAction(Path(path).name)
            action.setToolTip(path)
            action.setStatusTip(path)
            action.triggered.connect(lambda _checked=False, p=path: self.open_path(p))
        if not recent:
            none = self.recent_menu.addAction("No recent slides")
            none.setEnabled(False)
        else:
            self.recent_menu.addSeparator()
            clear = self.recent_menu.addAction("Clear Menu")
            clear.triggered.connect(self.settings.clear_recent_files)

    def show_about(self) -> None:
        box = QMessageBox(self)
        box.setWindowTitle("About MetaScope")
        box.setIconPixmap(app_icon().pixmap(64, 64))
        box.setText(f"<h3>MetaScope {__version__}</h3>")
        box.setInformativeText(
            "A desktop workbench for metastasis prediction: whole-slide review with heatmaps from "
            "small ONNX models, patch-classifier training, and slide-level prediction.<br><br>"
            "Everything runs on this computer; no slide or patient data leaves it.<br><br>"
            "MetaScope is a research tool and is not a medical device."
        )
        box.exec()

    # -- status bar ------------------------------------------------------------------------
    def _build_status_bar(self) -> None:
        sb = self.statusBar()
        self.hover_label = QLabel("", self)
        self.zoom_label = QLabel("", self)
        for label in (self.hover_label, self.zoom_label):
            label.setContentsMargins(8, 0, 8, 0)
        sb.addPermanentWidget(self.hover_label)
        sb.addPermanentWidget(self.zoom_label)
        sb.showMessage("Ready")

    def _on_slide_view_status_message(self, text: str, timeout_ms: int) -> None:
        self.statusBar().showMessage(text, timeout_ms)

    def _on_slide_view_slide_opened(self, path: str) -> None:
        if path:
            self.settings.add_recent_file(path)
            self.setWindowTitle(f"{Path(path).name} — MetaScope")
        else:
            self.setWindowTitle("MetaScope")

    # -- opening files ---------------------------------------------------------------------
    def open_path(self, path: str | os.PathLike[str]) -> Worker:
        """Start opening a slide in the Slides view (read off the GUI thread; returns the worker).

        The Slides view then emits ``slide_opened``, or ``slide_open_failed`` after an error dialog
        (and an unreadable slide leaves the Open Recent menu).
        """
        self.show_view("Slides")
        return self.slide_view.open_slide(path)

    def _on_slide_view_slide_open_failed(self, path: str, _message: str) -> None:
        if path in self.settings.recent_files():
            self.settings.remove_recent_file(path)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt API
        urls = event.mimeData().urls()
        if urls and any(u.isLocalFile() for u in urls):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt API
        files = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if files:
            event.acceptProposedAction()
            self.open_path(files[0])

    # -- geometry and closing --------------------------------------------------------------
    def _restore_geometry(self) -> None:
        geometry = self.settings.get("window/geometry")
        if geometry.isEmpty() or not self.restoreGeometry(geometry):
            screen = self.screen().availableGeometry() if self.screen() is not None else None
            w, h = 1440, 900
            if screen is not None:
                w, h = min(w, int(screen.width() * 0.92)), min(h, int(screen.height() * 0.9))
            self.resize(w, h)
            if screen is not None:
                self.move(screen.center().x() - w // 2, screen.center().y() - h // 2)
        state = self.settings.get("window/state")
        if not state.isEmpty():
            self.restoreState(state)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt API
        for widget in self._views.values():
            can_close = getattr(widget, "confirm_close", None)
            if callable(can_close) and not can_close():
                event.ignore()
                return
        for widget in self._views.values():
            shutdown = getattr(widget, "shutdown", None)
            if callable(shutdown):
                shutdown()
        self.settings.set("window/geometry", self.saveGeometry())
        self.settings.set("window/state", self.saveState())
        self.settings.sync()
        event.accept()

