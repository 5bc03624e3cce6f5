"""MetaScope entry point: no arguments (or slide paths) open the app; a command runs headless."""

from __future__ import annotations

import multiprocessing
import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    from engine.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    if args and (args[0] in commands or args[0].startswith("-")):
        from engine.cli import main as cli_main

        return cli_main(args)
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
