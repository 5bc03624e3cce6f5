"""Every command's --help reads as written: no doubled percent signs left from %-escaping."""

from __future__ import annotations

import argparse

from engine.cli import build_parser


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_help_texts_have_no_doubled_percent() -> None:
    bad = [p.prog for p in _all_parsers(build_parser()) if "%%" in p.format_help()]
    assert not bad, f"'%%' shown in the help of: {bad}"
