"""The `autoseg` command: parse, call the library, map errors to exit codes.

Exit codes: 0 success, 2 usage/configuration/data problems (`AutosegError`), 1 runtime
failures, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile

from autoseg import __version__, native_log
from autoseg.errors import AutosegError

# Subcommand modules in `autoseg.commands`, in the order `--help` lists them.
COMMANDS = ("prepare", "info", "models", "plan", "search", "leaderboard", "export", "predict", "evaluate")
DEBUG_HELP = "show tracebacks for errors"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoseg",
        description="AutoML for semantic segmentation: prepare data, search models, export.",
    )
    parser.add_argument("--version", action="version", version=f"autoseg {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"autoseg.commands.{name}").add_parser(subparsers)
    # `--debug` after the subcommand too. SUPPRESS: a subcommand without it must not reset
    # the value `autoseg --debug COMMAND` set (argparse writes sub-parser defaults last).
    for subparser in set(subparsers.choices.values()):
        subparser.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI and returns its exit code (also usable from tests).

    TensorFlow's native log goes to a temporary file (`autoseg.native_log`), which is kept
    and named on stderr when the command fails at run time (exit 1); `search --verbose`
    leaves it on the terminal.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if getattr(args, "verbose", False):
        return _run(args)
    fd, log = tempfile.mkstemp(prefix="autoseg-", suffix=".log")
    os.close(fd)
    keep = True  # an exception that --debug lets through keeps the log too
    try:
        with native_log.stderr_to(log):
            code = _run(args)
        keep = code == 1
        return code
    finally:
        if keep and os.path.getsize(log):
            print(f"TensorFlow's own log of this command: {log}", file=sys.stderr)
        else:
            os.unlink(log)


def _run(args: argparse.Namespace) -> int:
    """Runs the parsed command and maps its errors to exit codes."""
    try:
        return int(args.run(args) or 0)
    except AutosegError as exc:
        if args.debug:
            raise
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or a runtime failure: say so, short
        if args.debug:
            raise
        print(
            f"Error: {type(exc).__name__}: {exc}\n(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
