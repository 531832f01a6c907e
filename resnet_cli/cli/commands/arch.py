"""`resnet-classify arch`: how an architecture is built, stage by stage (explorer.py does the work)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ...outputs.writers import SummaryFormat


def command(
    arch: Annotated[str, typer.Argument(metavar="ARCH", help="Architecture, e.g. resnet50.", show_default=False)],
    input_size: Annotated[str, typer.Option("--input-size", "-s", metavar="N|HxW", help="Input size.")] = "224",
    blocks: Annotated[bool, typer.Option("--blocks", help="Show every block's main path and shortcut.")] = False,
    format: Annotated[Optional[SummaryFormat], typer.Option(
        "--format", "-f", case_sensitive=False, show_default=False, help="Default: table.")] = None,
) -> None:
    """Show how an architecture is built: stages, blocks, shapes, parameters and multiply-accumulates."""
    from ...core.console import print_data
    from ...models.explorer import describe, parse_input_size, print_blocks, print_stages
    from ...models.registry import get_arch
    from ...outputs.writers import dumps

    spec = get_arch(arch)  # argument errors first, before torch is imported
    size = parse_input_size(input_size)
    d = describe(spec.name, size, blocks=blocks)
    if format is not None and format.value == "json":
        typer.echo(dumps(d))
        return

    def render(console) -> None:
        print_stages(d, console)
        if blocks:
            print_blocks(d, console)

    print_data(render)
