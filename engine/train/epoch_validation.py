"""Per-epoch validation of the patch-classifier trainer: the validation pass over this rank's
shard, the calibration fitted on a new best epoch, and the epoch's progress message.

Split out of :mod:`engine.train.trainer`, which re-exports the public names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import Cancelled, ConfigError, DatasetError
from engine.jobs import ProgressEvent, report
from engine.train.prepare import _jsonable

if TYPE_CHECKING:
    from engine.train.trainer import _Run


def _epoch_msg(rec: dict[str, Any]) -> str:
    return (
        f"epoch {rec['epoch']}: train loss {rec['train_loss']:.4f}, val loss {rec['val_loss']:.4f}, "
        f"val AUC {rec['val_auc']:.4f}, acc {rec['accuracy']:.4f}"
    )


def _calibrate(run: _Run, logits: np.ndarray, y: np.ndarray, positive: int, epoch: int) -> dict[str, Any] | None:
    """Fit the calibration and operating threshold on the validation logits of a new best epoch.

    Returns the package ``extra`` entries (``operating_threshold``, ``calibration``,
    ``threshold_rule``), also written to ``RUN_DIR/calibration.json``; ``None`` when the
    validation split cannot define them (one class only).
    """
    from engine.train.calibration import CALIBRATION_FILE, fit_calibration

    cfg = run.cfg
    try:
        res = fit_calibration(logits, y, positive, method=cfg.calibration, rule=cfg.threshold_rule,
                              target=cfg.threshold_target, kind="logits")
    except (DatasetError, ConfigError) as exc:
        run.events.write("calibration_skipped", epoch=epoch, message=str(exc))
        return None
    extra = _jsonable({**res.extra(), "epoch": epoch})  # plain types: best.pt loads with weights_only
    if run.dist.is_main:
        from engine.fileio import atomic_write_json

        atomic_write_json(run.run_dir / CALIBRATION_FILE, extra)
    t = res.threshold
    run.events.write(
        "calibrated", epoch=epoch, method=res.calibration["method"], temperature=res.calibration["temperature"],
        threshold=t.threshold, rule=t.rule, target=t.target, sensitivity=t.sensitivity, specificity=t.specificity,
    )
    return extra


def _validate(run: _Run, net: Any, src: Any, labels: np.ndarray, to_input: Any, normalise: Any, torch: Any) -> tuple[np.ndarray, np.ndarray]:
    """Class logits ``(n, C)`` float32 of this rank's validation shard, and its labels."""
    bs = max(run.cfg.batch_size, 128)
    positions = [np.arange(i, min(i + bs, len(src))) for i in range(0, len(src), bs)]
    out = []
    net.eval()
    with torch.no_grad():
        for k, xb in enumerate(src.batches(positions)):
            if run.cancel is not None and run.cancel.cancelled and not run.dist.distributed:
                raise Cancelled("cancelled by user")
            with torch.autocast(device_type=run.device.type, dtype=run.amp_dtype or torch.float16, enabled=run.amp):
                # the DDP wrapper is bypassed for inference: no gradient sync needed
                module = net.module if hasattr(net, "module") else net
                logits = module(normalise(to_input(xb)))
            out.append(logits.float().cpu().numpy())
            report(run.progress, ProgressEvent("validate", k + 1, len(positions), "validating"))
    logits = np.concatenate(out) if out else np.zeros((0, 2), dtype=np.float32)
    return logits.astype(np.float32), labels
