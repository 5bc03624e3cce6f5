"""Run a ``metascope`` command in a subprocess, as a worker job (Qt-free).

The genomics and expression views talk to their engines through the command line of PRODUCT.md,
like a user with a terminal: the app stays independent of engine internals, a crash in a command
never takes the app down, and whatever the app does can be repeated by hand. :func:`run_cli` has
the worker signature (``progress``, ``cancel``, ``partial``), so it runs in a
:class:`gui.workers.Worker`; it waits in the OS (not holding the GIL) and reports the command's
last stderr line as progress.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import Cancelled, ConfigError, MetaScopeError
from engine.jobs import ProgressEvent
from engine.runs import cli_command, project_root

POLL_S = 0.1


class CommandError(MetaScopeError):
    """A ``metascope`` command ended with an error (its ``error: ...`` line is the message)."""


@dataclass(frozen=True, slots=True)
class CliResult:
    """What a finished command printed: ``data`` is its ``--json`` report (``None`` without)."""

    args: tuple[str, ...]
    stdout: str
    stderr: str
    data: Any = None
    files: tuple[str, ...] = field(default_factory=tuple)

    @property
    def summary(self) -> str:
        """The command's one-line summary (its last non-empty stdout line that is not JSON)."""
        lines = [ln.strip() for ln in self.stdout.splitlines() if ln.strip()]
        plain = [ln for ln in lines if not ln.startswith(("{", "}", "[", "]", '"'))]
        return plain[-1] if plain else ""


@functools.lru_cache(maxsize=1)
def _parser() -> Any:
    from engine.cli import build_parser

    try:
        return build_parser()
    except Exception as exc:  # noqa: BLE001 - a broken command module must not take a view down
        raise ConfigError(f"the MetaScope command line cannot be loaded ({type(exc).__name__}: {exc})") from exc


def _subparsers(parser: Any) -> dict[str, Any]:
    import argparse

    for action in parser._actions:  # noqa: SLF001 - argparse keeps sub-commands only here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return dict(action.choices)
    return {}


def command_options(path: Sequence[str]) -> set[str] | None:
    """The option strings of ``metascope PATH...`` (e.g. ``("train", "genomics")``), or ``None``
    when this installation has no such command (its engine is not built in)."""
    parser = _parser()
    for name in path:
        parser = _subparsers(parser).get(name)
        if parser is None:
            return None
    return {s for action in parser._actions for s in action.option_strings}  # noqa: SLF001


def has_command(path: Sequence[str]) -> bool:
    return command_options(path) is not None


def supported_options(path: Sequence[str]) -> set[str]:
    """:func:`command_options`, empty when the command (or the whole command line) is unavailable."""
    try:
        return command_options(path) or set()
    except ConfigError:
        return set()


def command_line(args: Sequence[str]) -> str:
    """``metascope ARGS`` as a user would type it (quoted where needed)."""
    import shlex

    return "metascope " + " ".join(shlex.quote(str(a)) for a in args)


def _command_path(args: Sequence[str]) -> list[str]:
    path = [str(args[0])] if args else []
    if args and args[0] in ("train", "genomics", "expression") and len(args) > 1:
        path.append(str(args[1]))
    return path


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - 2048))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    parts = [p.strip() for p in text.replace("\r", "\n").splitlines() if p.strip()]
    return parts[-1] if parts else ""


def parse_json_output(stdout: str) -> Any:
    """The JSON document a ``--json`` command printed (the whole output, or its last JSON block)."""
    text = stdout.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass  # not one JSON document: look for the block below
    # a summary line before or after the JSON: take the largest parseable block from a "{" line
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith(("{", "[")):
            for j in range(len(lines), i, -1):
                try:
                    return json.loads("\n".join(lines[i:j]))
                except ValueError:
                    continue
    return None


def error_line(stderr: str, code: int) -> str:
    """The command's ``error: ...`` line without the prefix (or its last line)."""
    lines = [ln.strip() for ln in stderr.replace("\r", "\n").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1][len("error:"):].strip()
    return lines[-1] if lines else f"the command failed (exit status {code})"


def run_cli(
    args: Sequence[str],
    *,
    json_output: bool = False,
    stage: str = "",
    progress: Any = None,
    cancel: Any = None,
    partial: Any = None,
) -> CliResult:
    """Run ``metascope ARGS`` to the end; raise :class:`CommandError` with its one-line error.

    Args:
        args: the command's arguments (``["genomics", "report", STUDY, "--out", DIR, "--json"]``).
        json_output: parse stdout as the command's ``--json`` report into ``CliResult.data``.
        stage: progress stage name (default: the command's name).
        progress: called with a :class:`ProgressEvent` carrying the command's last stderr line.
        cancel: a :class:`~engine.jobs.CancelToken`; when set, the command is terminated.

    Raises:
        ConfigError: this installation has no such command.
        CommandError: the command failed (exit status not 0).
        Cancelled: ``cancel`` was set.
    """
    args = [str(a) for a in args]
    path = _command_path(args)
    if path and not has_command(path):
        raise ConfigError(f"this MetaScope installation has no `metascope {' '.join(path)}` command yet")
    stage = stage or " ".join(path)
    env = os.environ.copy()
    if not getattr(sys, "frozen", False):
        root = str(project_root())
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    with tempfile.TemporaryDirectory(prefix="metascope-cli-") as tmp:
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                proc = subprocess.Popen(cli_command(args), stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                        cwd=str(project_root()) if not getattr(sys, "frozen", False) else None)
            except OSError as exc:
                raise CommandError(f"cannot start metascope: {exc.strerror or exc}") from exc
            last = ""
            started = time.monotonic()
            while True:
                try:
                    code = proc.wait(timeout=POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if cancel is not None and cancel.cancelled:
                    proc.terminate()
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                    raise Cancelled(f"{stage} cancelled")
                line = _last_line(err_path)
                if progress is not None and line and line != last:
                    last = line
                    progress(ProgressEvent(stage, int(time.monotonic() - started), None, line[:200]))
        stdout = out_path.read_text(encoding="utf-8", errors="replace")
        stderr = err_path.read_text(encoding="utf-8", errors="replace")
    if code != 0:
        raise CommandError(error_line(stderr, code))
    data = parse_json_output(stdout) if json_output else None
    return CliResult(tuple(args), stdout, stderr, data)
