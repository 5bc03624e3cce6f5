"""Following a training run's ``events.jsonl`` from outside: :class:`EventFollower` reads the lines
appended since its last read, :class:`RunHistory` folds them into what a progress view shows.

Split out of :mod:`engine.runs`, which re-exports these names. Nothing here imports Qt or torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EVENTS_NAME = "events.jsonl"


# -- events ----------------------------------------------------------------------------------------
def event_kind(event: Mapping[str, Any]) -> str:
    """The event's type name (``step``, ``epoch_ended``, ...)."""
    return str(event.get("event") or event.get("type") or event.get("kind") or "")


class EventFollower:
    """Reads new lines of a run's ``events.jsonl`` each time :meth:`read_new` is called.

    Only bytes appended since the last call are read, so following a long run costs nothing.
    A line without its newline yet (the trainer is mid-write) waits for the next call; lines that
    are not JSON objects are skipped. If the file shrinks (replaced), reading restarts at the
    beginning and :attr:`restarted` is set so a view can clear what it drew.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        self.path = p / EVENTS_NAME if p.is_dir() or p.suffix != ".jsonl" else p
        self._offset = 0
        self._partial = b""
        self.restarted = False
        self.skipped_lines = 0

    def read_new(self, max_bytes: int = 16 << 20) -> list[dict[str, Any]]:
        """Events appended since the previous call (at most ``max_bytes`` read per call)."""
        self.restarted = False
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size < self._offset:
            self._offset, self._partial = 0, b""
            self.restarted = True
        if size == self._offset:
            return []
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read(min(max_bytes, size - self._offset))
        except OSError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        out: list[dict[str, Any]] = []
        for raw in lines:
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                self.skipped_lines += 1
                continue
            if isinstance(obj, dict):
                out.append(obj)
            else:
                self.skipped_lines += 1
        return out


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f == f else None  # drop NaN


#: Validation metrics of ``epoch_ended`` events, as (event key, display name).
VAL_METRICS = (
    ("val_auc", "auc"),
    ("val_loss", "loss"),
    ("accuracy", "accuracy"),
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("f1", "f1"),
)


#: Numeric ``epoch_ended`` fields that are bookkeeping, not metrics to plot.
NOT_METRICS = frozenset({"epoch", "epochs", "fold", "time", "train_loss", "step", "steps", "lr", "seed", "seconds"})


def _is_extra_metric(key: str) -> bool:
    known = {k for k, _ in VAL_METRICS}
    return not (key in NOT_METRICS or key in known or key.endswith(("_s", "_ways")) or key.startswith("n_"))


@dataclass(slots=True)
class RunHistory:
    """What a progress view shows, folded from a run's events (see :meth:`apply`).

    Attributes:
        loss_points: ``(x, loss)`` of logged training steps, ``x`` in epochs (fractional).
        val_points: metric name (``auc``, ``loss``, ``accuracy``, ...) -> ``(epoch, value)``.
        extra_points: any other numeric ``epoch_ended`` field (``critic_loss``, ``gamma``,
            ``val_accuracy_6way``, ...) -> ``(epoch, value)``, so every run kind plots its own metrics.
        step_points: other numeric ``*loss*`` fields of ``step`` events -> ``(x, value)``.
        train_epoch_loss: ``(epoch, mean training loss)`` per finished epoch.
        confusion_matrix: the last epoch's validation confusion matrix (rows: true class).
        class_names: the dataset's classes.
        epoch: current epoch, 1-based (0 before the first).
        epochs: total epochs planned.
        step, steps: step within the epoch and steps per epoch.
        throughput: training patches per second of the latest logged steps.
        eta_s: seconds left, estimated by the trainer.
        device: device the trainer reports (``cpu``, ``cuda:0``, ...).
        gpu_memory_mb: peak GPU memory (MiB), when the trainer reports it.
        n_train, n_val: patches in the two splits.
        status: ``running``/``finished``/``failed``/``cancelled`` as far as events tell;
            ``result`` is the finished run's outcome (``finished`` or ``early_stopped``).
        message: the last error or status text.
        best: the best epoch's metrics (``epoch``, ``val_auc``, ...).
        checkpoints: number of checkpoints written.
        data_check: the validation report the trainer wrote (``data_checked`` event).
    """

    loss_points: list[tuple[float, float]] = field(default_factory=list)
    val_points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    train_epoch_loss: list[tuple[float, float]] = field(default_factory=list)
    extra_points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    step_points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    confusion_matrix: list[list[int]] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    throughput: float | None = None
    eta_s: float | None = None
    device: str = ""
    gpu_memory_mb: float | None = None
    n_train: int = 0
    n_val: int = 0
    status: str = ""
    result: str = ""
    message: str = ""
    best: dict[str, Any] = field(default_factory=dict)
    checkpoints: int = 0
    data_check: dict[str, Any] = field(default_factory=dict)
    events: int = 0
    # runs of several folds (cross-validation, then a final fit) restart their epochs per fold:
    # each fold's curve continues after the previous one instead of drawing back over it
    _fold: Any = None
    _fold_offset: float = 0.0
    _fold_epochs: float = 0.0

    def clear(self) -> None:
        fresh = RunHistory()
        for name in self.__slots__:  # type: ignore[attr-defined]
            setattr(self, name, getattr(fresh, name))

    @property
    def fraction(self) -> float | None:
        """Overall progress in [0, 1] (epochs and steps), ``None`` before the plan is known."""
        if self.status == "finished":
            return 1.0
        if not self.epochs:
            return None
        done = max(0, self.epoch - 1) + (self.step / self.steps if self.steps else 0.0)
        return min(1.0, done / self.epochs)

    def apply_all(self, events: Iterable[Mapping[str, Any]]) -> None:
        for e in events:
            self.apply(e)

    def apply(self, e: Mapping[str, Any]) -> None:
        """Fold one event into the history (unknown event types are counted and ignored)."""
        self.events += 1
        kind = event_kind(e)
        if kind in ("run_started", "resumed"):
            self._apply_start(e, resumed=kind == "resumed")
        elif kind == "data_checked":
            self.data_check = dict(e)
        elif kind == "epoch_started":
            self.status = "running"
            self.epoch = int(_num(e.get("epoch")) or self.epoch + 1)
            self.epochs = int(_num(e.get("epochs")) or self.epochs)
            self.step = 0
        elif kind == "step":
            self._apply_step(e)
        elif kind == "epoch_ended":
            self._apply_epoch_end(e)
        elif kind == "checkpoint":
            self.checkpoints += 1
        elif kind == "best":
            self.best = {**self.best, **dict(e)}
        elif kind == "early_stop":
            self.message = (
                f"stopped early: no better validation AUC for {e.get('patience')} epochs "
                f"(best epoch {e.get('best_epoch')})"
            )
        elif kind in ("cancelled", "finished", "failed"):
            self.status = kind
            self.message = str(e.get("message") or e.get("error") or self.message)
            if kind == "finished":
                self.eta_s = 0.0
                self.result = str(e.get("status") or "finished")
                if isinstance(e.get("best"), Mapping) and e["best"]:
                    self.best = dict(e["best"])

    def _apply_start(self, e: Mapping[str, Any], resumed: bool) -> None:
        self.status = "running"
        self.message = ""
        self.epochs = int(_num(e.get("epochs")) or self.epochs)
        self.steps = int(_num(e.get("steps_per_epoch")) or self.steps)
        self.device = str(e.get("device") or self.device)
        self.n_train = int(_num(e.get("n_train")) or self.n_train)
        self.n_val = int(_num(e.get("n_val")) or self.n_val)
        if isinstance(e.get("class_names"), list):
            self.class_names = [str(c) for c in e["class_names"]]
        if resumed:
            # the interrupted epoch restarts: drop what was logged after the last checkpoint
            start = float(_num(e.get("from_epoch")) or 0.0)
            self.epoch = int(start)
            self.step = 0
            self.loss_points = [p for p in self.loss_points if p[0] <= start]
            self.train_epoch_loss = [p for p in self.train_epoch_loss if p[0] <= start]
            self.val_points = {k: [p for p in v if p[0] <= start] for k, v in self.val_points.items()}
            self.extra_points = {k: [p for p in v if p[0] <= start] for k, v in self.extra_points.items()}
            self.step_points = {k: [p for p in v if p[0] <= start] for k, v in self.step_points.items()}

    def _apply_step(self, e: Mapping[str, Any]) -> None:
        self.status = "running"
        self.step = int(_num(e.get("step")) or self.step + 1)
        self.steps = int(_num(e.get("steps")) or self.steps)
        self.epoch = int(_num(e.get("epoch")) or self.epoch or 1)
        x = self._x(e, (self.epoch - 1) + (self.step / self.steps if self.steps else 0.0))
        loss = _num(e.get("loss"))
        if loss is not None:
            self.loss_points.append((x, loss))
        for key, raw in e.items():
            if key != "loss" and "loss" in key and (v := _num(raw)) is not None:
                self.step_points.setdefault(key, []).append((x, v))
        rate = _num(e.get("patches_per_s"))
        self.throughput = rate if rate is not None else self.throughput
        eta = _num(e.get("eta_s"))
        self.eta_s = eta if eta is not None else self.eta_s
        mem = _num(e.get("gpu_mem_mb"))
        self.gpu_memory_mb = mem if mem is not None else self.gpu_memory_mb

    def _x(self, e: Mapping[str, Any], x: float) -> float:
        """``x`` (epochs within the event's fold) on the run's axis: folds one after another."""
        fold = e.get("fold")
        if fold is not None and fold != self._fold:
            if self._fold is not None:
                self._fold_offset += self._fold_epochs
                self._fold_epochs = 0.0
            self._fold = fold
        self._fold_epochs = max(self._fold_epochs, float(int(x) + (1 if x % 1 else 0)))
        return self._fold_offset + x

    def _apply_epoch_end(self, e: Mapping[str, Any]) -> None:
        epoch = self._x(e, float(_num(e.get("epoch")) or self.epoch))
        self.step = self.steps or self.step
        train_loss = _num(e.get("train_loss"))
        if train_loss is not None:
            self.train_epoch_loss.append((epoch, train_loss))
        for key, name in VAL_METRICS:
            v = _num(e.get(key))
            if v is not None:
                self.val_points.setdefault(name, []).append((epoch, v))
        for key, raw in e.items():
            if key == "loss" and _num(raw) == train_loss:
                continue  # the training loss again, under its generic name
            if _is_extra_metric(str(key)) and (v := _num(raw)) is not None:
                self.extra_points.setdefault(str(key), []).append((epoch, v))
        cm = e.get("confusion_matrix")
        if isinstance(cm, list):
            self.confusion_matrix = [[int(x) for x in row] for row in cm if isinstance(row, list)]

    def latest(self, metric: str) -> float | None:
        """The last value of a validation metric (``auc``, ``loss``, ...)."""
        pts = self.val_points.get(metric) or self.extra_points.get(metric)
        return pts[-1][1] if pts else None
