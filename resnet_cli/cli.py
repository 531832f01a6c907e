"""The command line: parse, call one library function, format, exit code. Nothing heavy is imported here,
so `resnet-classify --help` answers without loading torch.

    resnet-classify IMAGE... [options]          classify (the default command)
    resnet-classify classify IMAGE... [options]
    resnet-classify models [--format table|json]
    resnet-classify download ARCH [--weights NAME]
    resnet-classify arch ARCH [--input-size N|HxW] [--blocks] [--format table|json]

A file that is named like a command is reached as ./models.
"""

from __future__ import annotations

import functools
import sys
from typing import Annotated, Optional

import typer

from . import __version__
from .errors import PROG, ExitCode, Interrupted, OutputClosed, UsageError
from .writers import Format
COMMANDS = ("classify", "models", "download", "arch")

app = typer.Typer(
    name=PROG,
    help="Classify images with the ResNet family (ResNet, ResNeXt, Wide ResNet) and torchvision's ImageNet "
    "weights.\n\nThe default command is classify: `resnet-classify photo.jpg` = `resnet-classify classify photo.jpg`.",
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)

# Options shared by several commands, declared once.
ArchOpt = Annotated[Optional[str], typer.Option(
    "--arch", "-a", help="Architecture (see `resnet-classify models`). Default: resnet50, or the one --weights "
    "names.", show_default=False)]
WeightsOpt = Annotated[str, typer.Option(
    "--weights", "-w", help="Published weights (DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2, ResNet50_Weights.IMAGENET1K_V2) "
    "or a checkpoint path (.pth/.pt state dict in torchvision's layout, possibly under 'state_dict' or 'model'; "
    ".safetensors).")]
FormatOpt = Annotated[Optional[Format], typer.Option(
    "--format", "-f", help="Output format. Default: a table on a terminal, else jsonl; with --output, by the "
    "file's extension (.json, .csv, .txt = table, else jsonl).", show_default=False, case_sensitive=False)]
OfflineOpt = Annotated[bool, typer.Option(
    "--offline", envvar="RESNET_CLASSIFY_OFFLINE", help="Never use the network: weights must be cached "
    "(env: RESNET_CLASSIFY_OFFLINE=1).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, no per-file error lines on stderr.")]


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


@app.command(no_args_is_help=True)
@_pipe_safe
def classify(
    inputs: Annotated[list[str], typer.Argument(
        metavar="INPUT", help="Image files, folders, quoted globs ('photos/*.jpg'), http(s) URLs, or - to read paths from stdin "
        "(one a line).", show_default=False)],
    arch: ArchOpt = None,
    weights: WeightsOpt = "DEFAULT",
    topk: Annotated[int, typer.Option("--topk", "-k", help="How many classes to report per image.")] = 5,
    format: FormatOpt = None,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", help="Write results to FILE instead of stdout (json and csv appear atomically).",
        show_default=False)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", "-b", help="Images per forward pass. Default: 8 on CPU, 64 on GPU.",
        show_default=False)] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into subfolders.")] = False,
    null: Annotated[bool, typer.Option("--null", "-0", help="With -, paths on stdin are NUL-separated "
                                       "(find -print0).")] = False,
    offline: OfflineOpt = False,
    labels: Annotated[Optional[str], typer.Option(
        help="Class names for a custom checkpoint, one a line. Default: ImageNet's for 1000 classes, else "
        "class_N.", show_default=False)] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run: keep --output's successes, "
                                         "retry its failures, classify the rest.")] = False,
    precision: Annotated[str, typer.Option(help="fp32 (exact), bf16 (CPUs with AVX-512 BF16/AMX, CUDA) or "
                                           "fp16 (GPU).")] = "fp32",
    fast_decode: Annotated[bool, typer.Option(
        "--fast-decode", help="Let JPEGs decode at reduced scale (at least twice the resize target) before the "
        "exact resize: much faster on large photos, near-identical results.")] = False,
    resize: Annotated[Optional[int], typer.Option(
        help="Override the resize of the shorter side (default: the weights' own).", show_default=False)] = None,
    crop: Annotated[Optional[int], typer.Option(
        help="Override the center-crop size; alone, resize keeps the weights' crop ratio.",
        show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option(
        help="Decode threads (default: one per core); with --engine ray, model actors (default: one per CPU, "
        "or per GPU).", show_default=False)] = None,
    quiet: QuietOpt = False,
    engine: Annotated[str, typer.Option(help="local, or ray to run on a Ray cluster (pip install "
                                        "'resnet-classify[ray]').")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(
        help="Ray cluster address (default: RAY_ADDRESS, else a local Ray).", show_default=False)] = None,
) -> None:
    """Classify images; print the top-k ImageNet classes of each, in input order."""
    from .runner import ClassifyOptions, run_classify

    opts = ClassifyOptions(
        inputs=inputs, arch=arch, weights=weights, topk=topk, format=format, output=output, device=device,
        batch_size=batch_size, workers=workers, recursive=recursive, null_separated=null, offline=offline,
        labels=labels, resume=resume, precision=precision.lower(), fast_decode=fast_decode, resize=resize,
        crop=crop, quiet=quiet, engine=engine.lower(), ray_address=ray_address,
    )
    raise typer.Exit(run_classify(opts))


@app.command()
@_pipe_safe
def models(
    format: Annotated[Optional[Format], typer.Option(
        "--format", "-f", help="table (default on a terminal), json (default otherwise) or jsonl.",
        show_default=False, case_sensitive=False)] = None,
) -> None:
    """List the architectures and their published weights: accuracy, size, preprocessing, cached or not."""
    from .catalog import models_json, print_models_table
    from .writers import dumps

    fmt = format or (Format.table if sys.stdout.isatty() else Format.json)
    if fmt is Format.table:
        print_models_table()
    elif fmt is Format.json:
        typer.echo(dumps(models_json()))
    elif fmt is Format.jsonl:
        for entry in models_json():
            typer.echo(dumps(entry))
    else:
        raise UsageError("models supports --format table, json or jsonl")


@app.command()
@_pipe_safe
def download(
    arch: Annotated[str, typer.Argument(metavar="ARCH", help="Architecture, or 'all'.", show_default=False)],
    weights: Annotated[str, typer.Option("--weights", "-w", help="Which weights: DEFAULT, a name, or 'all'.")]
    = "DEFAULT",
    quiet: QuietOpt = False,
) -> None:
    """Fetch published weights into torch's hub cache, for offline use later."""
    from .catalog import download_weights

    for line in download_weights(arch, weights, quiet=quiet):
        typer.echo(line)


@app.command("arch")
@_pipe_safe
def arch_command(
    arch: Annotated[str, typer.Argument(metavar="ARCH", help="Architecture, e.g. resnet50.", show_default=False)],
    input_size: Annotated[str, typer.Option("--input-size", "-s", help="N or HxW.")] = "224",
    blocks: Annotated[bool, typer.Option("--blocks", help="Show every block's main path and shortcut.")] = False,
    format: Annotated[Optional[Format], typer.Option(
        "--format", "-f", help="table (the default) or json.", show_default=False, case_sensitive=False)] = None,
) -> None:
    """Show how an architecture is built: stages, blocks, shapes, parameters and multiply-accumulates."""
    from .explorer import run_arch

    run_arch(arch, input_size, blocks=blocks, fmt=format or Format.table)


def _route_default_command(argv: list[str]) -> list[str]:
    """Insert 'classify' unless the first argument is a command or a top-level option (--help, --version)."""
    if not argv:
        return argv
    first = argv[0]
    if first in COMMANDS or first in ("-h", "--help", "--version"):
        return argv
    return ["classify", *argv]


def run(argv: list[str]) -> int:
    """Run the command line `argv` (without the program name); returns the exit code."""
    argv = _route_default_command(list(argv))
    try:
        # typer reports bad options and arguments itself (a usage message, exit 2) and ends every command
        # with SystemExit; the library's own errors come through as exceptions.
        app(args=argv, prog_name=PROG, standalone_mode=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else ExitCode.USAGE)
    except UsageError as exc:  # WeightsUnavailable included: its message spans a few lines on purpose
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        code = ExitCode.USAGE
    except OutputClosed:
        import os

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
