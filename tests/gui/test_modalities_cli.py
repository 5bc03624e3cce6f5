"""Running ``metascope`` commands from the app: one-line errors, JSON reports, Cancel."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("pytestqt")

import gui.cli_job as cli_job  # noqa: E402
from engine.errors import Cancelled  # noqa: E402
from engine.jobs import CancelToken  # noqa: E402
from gui.cli_job import CommandError, parse_json_output, run_cli  # noqa: E402
from gui.views.cli_runner import CliRunner  # noqa: E402


@pytest.fixture()
def script(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Make ``metascope ARGS`` run a Python snippet instead (ARGS[-1] is the code)."""
    monkeypatch.setattr(cli_job, "has_command", lambda path: True)
    monkeypatch.setattr(cli_job, "cli_command", lambda args: [sys.executable, "-c", args[-1]])


def test_error_line_json_and_missing_command(script, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    code = "import sys; print('progress', file=sys.stderr); print('error: the MAF names 3 unknown samples', file=sys.stderr); sys.exit(2)"
    with pytest.raises(CommandError, match="^the MAF names 3 unknown samples$"):
        run_cli(["genomics", "report", code])
    result = run_cli(["expression", "info", "print('24 samples'); print('{\"n_samples\": 24}')"], json_output=True)
    assert result.data == {"n_samples": 24} and result.summary == "24 samples"
    assert parse_json_output('{\n "a": 1\n}\nsummary line') == {"a": 1}
    monkeypatch.setattr(cli_job, "has_command", lambda path: False)
    with pytest.raises(Exception, match="no `metascope genomics report` command"):
        run_cli(["genomics", "report", "x"])


def test_cancel_ends_the_command(script, tmp_path) -> None:  # noqa: ANN001
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        run_cli(["expression", "info", "import time; time.sleep(60)"], cancel=token)


def test_runner_cancel_in_the_gui(qtbot, script, tmp_path) -> None:  # noqa: ANN001
    runner = CliRunner()
    qtbot.addWidget(runner)
    marker = tmp_path / "started"
    code = f"import pathlib, time; pathlib.Path({str(marker)!r}).write_text('x'); time.sleep(60)"
    busy: list[bool] = []
    runner.busy_changed.connect(busy.append)
    worker = runner.start("info", ["expression", "info", code], "Reading…")
    assert worker is not None and runner.busy and runner.start("again", ["x"]) is None  # one at a time
    qtbot.waitUntil(marker.exists, timeout=30_000)
    with qtbot.waitSignal(worker.signals.cancelled, timeout=30_000):
        runner.cancel_button.click()
    assert not runner.busy and busy == [True, False] and runner.message.kind == "warning"
