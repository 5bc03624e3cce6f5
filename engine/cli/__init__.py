"""The ``metascope`` command line. Every capability of the app, headless.

Each command group lives in its own module with a ``register(sub, groups)`` function that adds
its sub-commands; a handler takes the parsed namespace and returns an exit status. Handlers turn
the namespace into the engine's config objects at once: no namespaces inside the engine.

Exit status: 0 success, 2 bad input (``error: ...`` on one line), 1 unexpected failure,
130 cancelled (Ctrl+C).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from engine import __version__
from engine.errors import Cancelled, MetaScopeError

# Modules that contribute commands. A module missing here is a packaging bug, not user error.
COMMAND_MODULES = (
    "engine.cli.slides",
    "engine.cli.data",
    "engine.cli.patches",
    "engine.cli.mil",
    "engine.cli.genomics",  # cBioPortal studies: primary vs metastasis from mutations
    "engine.cli.expression",  # expression matrices, one-shot CancerSiamese
    "engine.cli.synthetic",  # expression deg / generate / realism, WGAN-GP
    "engine.cli.evaluate_slides",  # heatmaps vs tumour annotations: tile AUC, FROC, slide AUC
    "engine.cli.review",  # an evaluation's patches, errors first
    "engine.cli.pn_stage",  # patient-level pN category from a heatmap folder
)


# Packages the viewer edition (build/metascope.spec, flavour "viewer") does not bundle.
TRAINING_ONLY_MODULES = frozenset({"torch", "torchvision", "onnxscript"})


class UsageError(MetaScopeError):
    """Bad command-line usage."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="metascope",
        description="MetaScope: metastasis prediction workbench. Without a command, opens the app.",
    )
    parser.add_argument("--version", action="version", version=f"MetaScope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    train = sub.add_parser("train", help="train a model (patches, mil)", description="Train a model.")
    train_sub = train.add_subparsers(dest="train_kind", metavar="KIND", parser_class=_Parser)
    train_sub.required = True
    groups = {"train": train_sub}
    # `metascope expression ...` is shared by two modules (one-shot and synthetic expression)
    expression = sub.add_parser(
        "expression", help="expression matrices: info, one-shot tumour type, DEG, synthetic profiles",
        description="Expression matrices: one-shot tumour type (CancerSiamese) and synthetic profiles (WGAN-GP).",
    )
    expression_sub = expression.add_subparsers(dest="expression_command", metavar="COMMAND", parser_class=_Parser)
    expression_sub.required = True
    groups["expression"] = expression_sub
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # command group not built into this bundle
                continue
            raise
        module.register(sub, groups)
    return parser


def command_names(parser: argparse.ArgumentParser | None = None) -> list[str]:
    """The top-level command names (``train``, ``slides``, ...) of ``parser`` (default: the CLI's)."""
    parser = parser or build_parser()
    for action in parser._actions:  # noqa: SLF001 - argparse offers no public accessor
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return list(action.choices)
    return []


def unknown_command_error(word: str, commands: Sequence[str]) -> str:
    """The one-line error for a first word that is neither a command nor a file, with a hint."""
    import difflib

    if any(sep in word for sep in ("/", "\\")) or Path(word).suffix:
        return f"no such file or command: {word!r}"
    close = difflib.get_close_matches(word.lower(), list(commands), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; commands: {', '.join(sorted(commands))}"
    return f"unknown command {word!r}{hint}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        args = parser.parse_args(args_list)
        handler = getattr(args, "handler", None)
        if handler is None:
            parser.print_help()
            return 2
        return int(handler(args) or 0)
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0) if isinstance(exc.code, int) else 0
    except MetaScopeError as exc:
        msg = " ".join(str(exc).split())
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ncancelled", file=sys.stderr)
        return 130
    except Exception as exc:  # unexpected: keep the traceback for a bug report
        if isinstance(exc, ModuleNotFoundError) and exc.name in TRAINING_ONLY_MODULES:
            # the viewer installer leaves PyTorch out: training and torch-based export are unavailable
            print(
                "error: this command needs PyTorch, which this MetaScope installation (viewer edition) does not "
                "include; install the full edition",
                file=sys.stderr,
            )
            return 2
        traceback.print_exc()
        print("error: unexpected failure (see the traceback above); please report it", file=sys.stderr)
        return 1
