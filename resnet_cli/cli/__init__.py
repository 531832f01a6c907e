"""The command line: declares the commands (one module each in `commands/`), routes the default command, and
turns the library's errors into one-line messages and exit codes. Nothing heavy is imported here, so
`resnet-classify --help` answers without loading torch.

    resnet-classify INPUT... [options]          classify (the default command)
    resnet-classify classify INPUT... [options]
    resnet-classify explain INPUT... [--method M] [--layer L] [--target T] [--out DIR]
    resnet-classify evaluate DATA [--arch A,B...] [--weights W,V...]
    resnet-classify embed INPUT... -o FILE
    resnet-classify similar QUERY... --index FILE | --duplicates --index FILE
    resnet-classify train DATA -o MODEL.safetensors
    resnet-classify models [--format table|json|jsonl]
    resnet-classify download ARCH [--weights NAME|all]
    resnet-classify arch ARCH [--input-size N|HxW] [--blocks] [--format table|json]

(docs/cli.md has every option.)

A file that is named like a command is reached as ./models. A first argument that is no file but close to a
command name (`modles`) is a usage error that suggests the command, before anything is loaded; `help [COMMAND]`
and `version` do what they say.

Every usage error, the library's and the parser's alike, is one line on stderr, `resnet-classify: error: ...`,
in this tool's words, with exit code 2 (`usage_message` rewords the parser's).
"""

from __future__ import annotations

import difflib
import functools
import os
import shlex
import sys
from typing import Annotated

import typer
import typer.main

from .. import __version__
from .commands import COMMANDS
from ..core.console import printable
from ..core.errors import PROG, ExitCode, Interrupted, OutputClosed, UsageError, WeightsUnavailable

COMMAND_NAMES = tuple(name for name, _, _ in COMMANDS)
TOP_LEVEL_OPTIONS = ("-h", "--help", "--version", "--install-completion", "--show-completion")

app = typer.Typer(
    name=PROG,
    help="Classify images with the ResNet family (ResNet, ResNeXt, Wide ResNet) and torchvision's ImageNet "
    "weights.\n\nThe default command is classify: `resnet-classify photo.jpg` = `resnet-classify classify photo.jpg`. "
    "`resnet-classify help COMMAND` shows a command's options.",
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


def _command():
    """The click command typer builds from `app`, its arguments shown as their metavar alone in usage lines and
    help (`INPUT...`, not `{INPUT...}...` and `INPUT... <list[str]>`: a Python type means nothing to a user)."""
    command = typer.main.get_command(app)
    for sub in getattr(command, "commands", {}).values():
        for param in sub.params:
            if param.param_type_name != "argument" or not param.metavar:
                continue
            shown = param.metavar if param.required else f"[{param.metavar}]"
            if hasattr(param, "display_type_rich"):
                param.display_type_rich = lambda ctx: None
            if hasattr(param, "_usage_display_name"):
                param._usage_display_name = lambda shown=shown: shown
    return command


INPUT_COMMANDS = ("classify", "explain", "embed")  # the commands whose arguments are images


def _is_bare_word(arg: str) -> bool:
    """A word with no extension, no folder, no glob and no scheme: `help`, `lsit`, `nothere`."""
    return bool(arg) and not arg.startswith("-") and not any(c in arg for c in "./\\:*?[") and os.sep not in arg


def _check_inputs_name_something(command, argv: list[str]) -> None:
    """Inputs that are all missing bare words name nothing to classify: more likely a mistyped command than
    images. A usage error now, before the weights are looked up, loaded or downloaded. (A missing input beside
    others is a not_found record in its place, as documented; `photo.jpg` alone is a missing photo.)"""
    if not argv or argv[0] not in INPUT_COMMANDS:
        return
    try:  # the arguments as the command will read them; every error in them is reported when it runs
        with command.commands[argv[0]].make_context(argv[0], list(argv[1:]), resilient_parsing=True) as ctx:
            inputs = list(ctx.params.get("inputs") or ())
    except Exception:
        return
    if inputs and all(_is_bare_word(a) and not os.path.lexists(a) for a in inputs):
        words = printable(" ".join(map(repr, inputs)))
        what = "is neither a file nor a command" if len(inputs) == 1 else "are neither files nor commands"
        raise UsageError(f"{words} {what} (see {PROG} --help)")


def _route_default_command(argv: list[str]) -> list[str]:
    """Insert 'classify' unless the first argument is a command or a top-level option (--help, --version,
    completion). A first argument that names no file but is close to a command is taken for a typo."""
    if not argv:
        return argv
    first = argv[0]
    if first == "help":  # `help`, `help explain`: what the words mean (a file named help is ./help)
        return [argv[1], "--help"] if len(argv) > 1 and argv[1] in COMMAND_NAMES else ["--help"]
    if first == "version" and len(argv) == 1:
        return ["--version"]
    if first in COMMAND_NAMES or first.split("=")[0] in TOP_LEVEL_OPTIONS:
        return argv
    # Only a bare word can be a mistyped command: `photo.jpg` or `dir/x` that does not exist is a missing input.
    if first.isalpha() and not os.path.lexists(first):
        close = difflib.get_close_matches(first.lower(), COMMAND_NAMES, n=1, cutoff=0.6)
        if close:
            raise UsageError(f"{first!r} is neither a file nor a command (did you mean {close[0]}?)")
    return ["classify", *argv]


def _parser_error(exc: BaseException) -> bool:
    """Whether `exc` is the command-line parser's usage error (click's, or the copy of click typer carries)."""
    return any(c.__name__ == "UsageError" and c.__module__.endswith("exceptions") for c in type(exc).__mro__)


def _option_name(param) -> str:
    """How a message names a parameter: an option by its long name (--topk), an argument by its metavar."""
    opts = [o for o in getattr(param, "opts", ()) if o.startswith("-")]
    if opts:
        return max(opts, key=len)
    return getattr(param, "metavar", None) or (param.name or "argument").upper()


def _choices(param) -> list[str]:
    """The values a choice parameter takes (an enum annotation in typer, a click.Choice in click)."""
    import enum

    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(m.value) for m in annotation]
    return [str(c) for c in getattr(getattr(param, "type", None), "choices", None) or ()]


def _one_of(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _number(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _bad_value(exc) -> str:
    """A parameter's bad value in this tool's words: `--topk 0: must be at least 1`. The validation library
    typer uses says why in structured form (its error's type and bounds); its sentences never reach the user."""
    param = getattr(exc, "param", None)
    name = _option_name(param) if param is not None else "a value"
    details = getattr(exc.__cause__, "errors", None)
    error = details()[0] if callable(details) and details() else None
    if error is None:  # click's own types (older typer): its message, as a clause of ours
        return f"{name}: {exc.message.rstrip('.')}"
    value = printable(shlex.quote(str(error.get("input", ""))))
    kind, ctx = error.get("type", ""), error.get("ctx") or {}
    choices = _choices(param) if param is not None else []
    if choices:
        why = f"use {_one_of(choices)}"
    elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = next(iter(ctx.values()), "")
        why = {"greater_than_equal": "must be at least", "greater_than": "must be more than",
               "less_than_equal": "must be at most", "less_than": "must be less than"}[kind] + f" {_number(bound)}"
    elif kind.startswith("int_"):
        why = "not a whole number"
    elif kind.startswith("float_"):
        why = "not a number"
    else:
        why = "not a valid value"
    return f"{name} {value}: {why}"


def usage_message(exc: BaseException) -> str:
    """The parser's usage error (a bad value, an unknown option, a missing argument) as one line in this tool's
    words, as the library's own UsageError reads: no `Usage:` block, no `Error:` prefix, no library wording."""
    import re

    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "info_name", None) or PROG
    where = "" if command == PROG else f" {command}"  # `resnet-classify explain --help`
    kind = type(exc).__name__
    message = str(getattr(exc, "message", "") or exc)
    if kind == "MissingParameter":
        param = exc.param
        what = _option_name(param)
        if what.startswith("-") and getattr(param, "metavar", None):
            what += f" {param.metavar}"
        return f"{command} needs {what} (see {PROG}{where} --help)"
    if kind == "BadParameter" or (kind != "NoSuchOption" and getattr(exc, "param", None) is not None):
        return _bad_value(exc)
    if kind == "NoSuchOption":
        name = printable(exc.option_name)
        close = sorted(getattr(exc, "possibilities", None) or ())
        hint = f" (did you mean {_one_of(close)}?)" if close else f" (see {PROG}{where} --help)"
        return f"{command} has no option {name}{hint}"
    needs = re.fullmatch(r"Option '(.+)' requires (an argument|\d+ arguments)\.?", message)
    if needs:
        return f"{needs.group(1)} needs a value"
    extra = re.fullmatch(r"Got unexpected extra argument(?:s|\(s\))? \((.*)\)\.?", message)
    if extra:
        return f"{command} got an unexpected argument: {printable(extra.group(1))} (see {PROG}{where} --help)"
    return printable(message[:1].lower() + message[1:].rstrip("."))


def run(argv: list[str]) -> int:
    """Run the command line `argv` (without the program name); returns the exit code."""
    try:
        argv = _route_default_command(list(argv))
        # Not standalone: the parser's usage errors come here, to be printed in the tool's one style.
        command = _command()
        _check_inputs_name_something(command, argv)
        result = command.main(args=argv, prog_name=PROG, standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else ExitCode.USAGE)
    except UsageError as exc:  # WeightsUnavailable included: its message spans a few lines on purpose
        text = "\n".join(map(printable, str(exc).split("\n")))  # a label or a path in it: no escape sequence
        print(f"{PROG}: error: {text}", file=sys.stderr)
        code = ExitCode.WEIGHTS_UNAVAILABLE if isinstance(exc, WeightsUnavailable) else ExitCode.USAGE
    except BrokenPipeError:  # help or version into a closed pipe
        code = _output_closed()
    except OutputClosed:
        code = _output_closed()
    except Interrupted as exc:
        print(f"{PROG}: interrupted", file=sys.stderr)
        code = 128 + exc.signum
    except Exception as exc:
        if not _parser_error(exc):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # a command given nothing shows its help
            exc.show()
        else:
            print(f"{PROG}: error: {usage_message(exc)}", file=sys.stderr)
        code = ExitCode.USAGE
    return int(code)


def _output_closed() -> int:
    try:  # later flushes of stdout must not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return ExitCode.BROKEN_PIPE


def main() -> None:
    code = run(sys.argv[1:])
    if "torch" in sys.modules:
        # Everything is written and closed; skip the interpreter's teardown of torch (0.4 s of a 2.5 s
        # single-image run), which a user would otherwise wait for.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)
