"""MetaScope entry point: no arguments (or slide paths) open the app; a command runs headless."""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    from engine.cli import command_names, unknown_command_error

    commands = command_names()
    if args and (args[0] in commands or args[0].startswith("-")):
        from engine.cli import main as cli_main

        return cli_main(args)
    if args and not Path(args[0]).expanduser().exists():
        # a typo must not open the app (headless, it would hang): say so, like any bad input
        print(f"error: {unknown_command_error(args[0], commands)}", file=sys.stderr)
        return 2
    from gui.app import run_gui

    return run_gui(args)


def entry() -> None:
    """Console-script entry point (``metascope``)."""
    multiprocessing.freeze_support()
    try:
        multiprocessing.set_start_method("spawn")
    except RuntimeError:
        pass  # already set (e.g. re-entered inside a spawned child)
    sys.exit(main())


if __name__ == "__main__":
    entry()
