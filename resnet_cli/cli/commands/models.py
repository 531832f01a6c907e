"""`resnet-classify models` and `download`: what can be run, how good it is, whether it is on disk, and
fetching it for offline use."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Optional

import typer

from ...core.console import print_data
from ...core.errors import OFFLINE_REASON, UsageError
from ..options import QuietOpt
from ...models.registry import WeightsSpec, architectures, get_arch
from ...models.resolve import published
from ...models.weights import cached_file, fetch, offline_from_env
from ...outputs.writers import Format, ListFormat, choose_format, dumps


def models_command(
    format: Annotated[Optional[ListFormat], typer.Option(
        "--format", "-f", case_sensitive=False, show_default=False,
        help="Default: a table on a terminal, else json.")] = None,
) -> None:
    """List the architectures and their published weights: accuracy, size, preprocessing, cached or not."""

    fmt = choose_format(format, pipe=Format.json)
    if fmt is Format.table:
        print_data(print_models_table)
    elif fmt is Format.json:
        typer.echo(dumps(models_json()))
    else:
        for entry in models_json():
            typer.echo(dumps(entry))


def download_command(
    arch: Annotated[str, typer.Argument(metavar="ARCH", help="Architecture, or 'all'.", show_default=False)],
    weights: Annotated[str, typer.Option("--weights", "-w", metavar="WEIGHTS",
                                         help="Which weights: DEFAULT, a name, or 'all'.")] = "DEFAULT",
    quiet: QuietOpt = False,
) -> None:
    """Fetch published weights into torch's hub cache, for offline use later."""
    for line in download_weights(arch, weights, quiet=quiet):
        typer.echo(line)


def _weights_json(spec: WeightsSpec) -> dict:
    extra = {"backend": spec.backend, "unquantized": spec.unquantized} if spec.quantized else {}
    return {
        "name": spec.name,
        "acc@1": spec.acc1,
        "acc@5": spec.acc5,
        "params": spec.num_params,
        "gflops": spec.gflops,
        "file_size_mb": spec.file_size_mb,
        "resize": spec.preprocess.resize,
        "crop": spec.preprocess.crop,
        "url": spec.url,
        "cached": cached_file(spec).is_file(),
        **extra,
    }


def models_json() -> list[dict]:
    """`models --format json`: [{"arch", "default", "weights": [{"name", "acc@1", ...}], "int8"}] (README
    contract); "int8" is torchvision's quantized weights of the architecture, {"enum", "default", "weights": [the
    same fields, and "backend", "unquantized"]}, or null where there are none."""
    return [
        {"arch": a.name, "default": a.default, "weights": [_weights_json(w) for w in a.weights.values()],
         "int8": {"enum": a.quantized_enum, "default": a.quantized_default,
                  "weights": [_weights_json(w) for w in a.quantized.values()]} if a.quantized else None}
        for a in architectures().values()
    ]


def print_models_table(console) -> None:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, pad_edge=False, show_edge=False)
    # Parameter counts are in --format json; MB tells the same story in fewer columns.
    for col, just in (("arch", "left"), ("weights", "left"), ("acc@1", "right"), ("acc@5", "right"),
                      ("GFLOPS", "right"), ("MB", "right"), ("input", "right"), ("cached", "center")):
        table.add_column(col, justify=just, no_wrap=True)
    for a in architectures().values():
        for i, w in enumerate(a.all_weights):
            default = " [dim]*[/]" if w.name == a.default else " [cyan]int8[/]" if w.quantized else ""
            table.add_row(
                a.name if i == 0 else "", w.name + default, f"{w.acc1:.2f}", f"{w.acc5:.2f}",
                f"{w.gflops:.2f}", f"{w.file_size_mb:.0f}",
                f"{w.preprocess.resize}→{w.preprocess.crop}",
                "[green]✓[/]" if cached_file(w).is_file() else "[dim]-[/]",
            )
        table.add_section()
    table.caption = ("ImageNet-1K accuracy (%) from torchvision. * DEFAULT weights. input: resize→crop.\n"
                     "int8: torchvision's quantized weights, run on the CPU (fbgemm).\n"
                     "Fetch for offline use: resnet-classify download ARCH [--weights NAME|all]")
    table.caption_justify = "left"
    console.print(table)


def download_weights(arch: str, weights: str = "DEFAULT", *, quiet: bool = False) -> Iterator[str]:
    """Fetch weights into the hub cache; yields one line per file: its path, and whether it was there."""
    if offline_from_env():
        raise UsageError(f"download: {OFFLINE_REASON}")
    archs = list(architectures().values()) if arch.lower() == "all" else [get_arch(arch)]
    for a in archs:
        specs = a.all_weights if weights.lower() == "all" else [published(a, weights)]
        for spec in specs:
            was_cached = cached_file(spec).is_file()
            path = fetch(spec, offline=False, quiet=quiet, checkpoint_hint=False)
            yield f"{spec.full_name}\t{path}\t{'already cached' if was_cached else 'downloaded'}"
