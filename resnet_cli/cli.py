"""The command line: declares the commands (one module each in `commands/`), routes the default command, and
turns the library's errors into one-line messages and exit codes. Nothing heavy is imported here, so
`resnet-classify --help` answers without loading torch.

    resnet-classify INPUT... [options]          classify (the default command)
    resnet-classify classify INPUT... [options]
    resnet-classify models [--format table|json|jsonl]
    resnet-classify download ARCH [--weights NAME|all]
    resnet-classify arch ARCH [--input-size N|HxW] [--blocks] [--format table|json]

A file that is named like a command is reached as ./models. A first argument that is no file but close to a
command name (`modles`) is a usage error that suggests the command, before anything is loaded.
"""

from __future__ import annotations

import difflib
import functools
import os
import sys
from typing import Annotated

import typer

from . import __version__
from .commands import COMMANDS
from .errors import PROG, ExitCode, Interrupted, OutputClosed, UsageError, WeightsUnavailable

COMMAND_NAMES = tuple(name for name, _, _ in COMMANDS)
TOP_LEVEL_OPTIONS = ("-h", "--help", "--version", "--install-completion", "--show-completion")

app = typer.Typer(
    name=PROG,
    help="Classify images with the ResNet family (ResNet, ResNeXt, Wide ResNet) and torchvision's ImageNet "
    "weights.\n\nThe default command is classify: `resnet-classify photo.jpg` = `resnet-classify classify photo.jpg`.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: wraps cleanly at 80 columns, and text like [ray] prints as written
)


def _pipe_safe(command):
    """A reader that goes away (`| head`) ends the command with OutputClosed (exit 141), not typer's exit 1."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except BrokenPipeError:
            raise OutputClosed() from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG} {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    pass


for _name, _function, _needs_args in COMMANDS:
    app.command(_name, no_args_is_help=_needs_args)(_pipe_safe(_function))


def _route_default_command(argv: list[str]) -> list[str]:
    """Insert 'classify' unless the first argument is a command or a top-level option (--help, --version,
    completion). A first argument that names no file but is close to a command is taken for a typo."""
    if not argv:
        return argv
    first = argv[0]
    if first in COMMAND_NAMES or first.split("=")[0] in TOP_LEVEL_OPTIONS:
        return argv
    # Only a bare word can be a mistyped command: `photo.jpg` or `dir/x` that does not exist is a missing input.
    if first.isalpha() and not os.path.lexists(first):
        close = difflib.get_close_matches(first.lower(), COMMAND_NAMES, n=1, cutoff=0.6)
        if close:
            raise UsageError(f"{first!r} is neither a file nor a command (did you mean {close[0]}?)")
    return ["classify", *argv]


def run(argv: list[str]) -> int:
    """Run the command line `argv` (without the program name); returns the exit code."""
    try:
        argv = _route_default_command(list(argv))
        # typer reports bad options and arguments itself (a usage message, exit 2) and ends every command
        # with SystemExit; the library's own errors come through as exceptions.
        app(args=argv, prog_name=PROG, standalone_mode=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else ExitCode.USAGE)
    except UsageError as exc:  # WeightsUnavailable included: its message spans a few lines on purpose
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        code = ExitCode.WEIGHTS_UNAVAILABLE if isinstance(exc, WeightsUnavailable) else ExitCode.USAGE
    except OutputClosed:
        try:  # later flushes of stdout must not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        code = ExitCode.BROKEN_PIPE
    except Interrupted as exc:
        print(f"{PROG}: interrupted", file=sys.stderr)
        code = 128 + exc.signum
    return int(code)


def main() -> None:
    code = run(sys.argv[1:])
    if "torch" in sys.modules:
        # Everything is written and closed; skip the interpreter's teardown of torch (0.4 s of a 2.5 s
        # single-image run), which a user would otherwise wait for.
        import os

        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)
