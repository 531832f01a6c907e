"""The architecture explorer behind `resnet-classify arch`: stages, blocks, shapes, parameters and
multiply-accumulates of one architecture at one input size.

Nothing here is a table of numbers. The model is built on the meta device (no weights, no memory), run once on
a meta input of the asked size with a forward hook on every module, and the answer is read off what the hooks
saw (each module call's input and output shape, in call order) and off the modules themselves (kernel, stride,
channels, parameter counts). The meta forward does no arithmetic, so resnet152 at 4000x4000 costs the same as
at 224x224.

Conventions of the JSON contract (`describe`):
- stages are `stem`, `layer1`..`layer4`, `head`, in order. `block` is the residual block's class name
  (BasicBlock, Bottleneck) and `blocks` how many there are; both are null for stem and head, which are plain
  layers, not residual blocks.
- `stride` is the factor by which the stage divides the resolution, the product of the strides on its main
  path: stem 4 (conv 7x7 stride 2, max-pool stride 2), layer1 1, layer2..layer4 2. The head's is null: its
  adaptive pooling collapses whatever resolution arrives to 1x1, which no fixed stride describes.
- `output` is [C, H, W]. The head's output is the logits, written [classes, 1, 1] so that every stage's output
  has the same form.
- MACs count convolutions and the linear layer (multiply-accumulates, not FLOPs: torchvision's "GFLOPS" are
  these in billions). BatchNorm, ReLU, pooling and the residual adds are not counted.
- with `blocks=True` each stage carries `units`: its residual blocks (stem and head: one unit each) with the
  main path op by op, the shortcut and the merge; see `_unit`.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.errors import UsageError
from .registry import ArchSpec, get_arch

if TYPE_CHECKING:  # torch is imported only once the arguments are known to be good
    from torch import nn

STEM, HEAD = "stem", "head"
_SIZE = re.compile(r"\s*([+-]?\d+)\s*(?:[x×]\s*([+-]?\d+)\s*)?", re.IGNORECASE)
_SIZE_HELP = "expected N or HxW with positive integers, e.g. 224 or 375x500"


# ---- input size -------------------------------------------------------------------------------------------

def parse_input_size(text: str) -> tuple[int, int]:
    """'224' -> (224, 224); '375x500' -> (375, 500) as H x W. Only the syntax and the sign are checked here:
    whether a size is big enough for the network is the model's to say (`describe`)."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise UsageError(f"--input-size {text!r}: {_SIZE_HELP}")
    h = int(match.group(1))
    w = int(match.group(2)) if match.group(2) is not None else h
    if h < 1 or w < 1:
        raise UsageError(f"--input-size {text!r}: {_SIZE_HELP}")
    return h, w


# ---- tracing ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Call:
    """One module call seen by the hooks: its qualified name, the module, and the shapes (batch dim dropped)."""

    name: str
    module: nn.Module
    input: tuple[int, ...]
    output: tuple[int, ...]


@functools.lru_cache(maxsize=4)
def _meta_model(arch_name: str) -> nn.Module:
    # Cached because the tests describe each architecture at several sizes; a meta model holds no memory.
    # eval(): in training mode BatchNorm refuses a 1x1 map of a single image, which is a valid input here.
    from .model import build

    return build(get_arch(arch_name)).eval()


def trace(model: nn.Module, size: tuple[int, int]) -> list[Call]:
    """Every module call of one forward pass of a 1x3xHxW meta input, in the order the calls finished (a
    container finishes after its children). A module called twice (a block's shared ReLU) appears twice."""
    import torch

    names = {m: n for n, m in model.named_modules()}
    calls: list[Call] = []

    def record(module, args, output):
        calls.append(Call(names[module], module, tuple(args[0].shape[1:]), tuple(output.shape[1:])))

    hooks = [m.register_forward_hook(record) for m in model.modules()]
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, *size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return calls


def _passes(model: nn.Module, size: tuple[int, int]) -> bool:
    try:
        trace(model, size)
    except (RuntimeError, ValueError):  # what convolutions and pools raise for an input smaller than a kernel
        return False
    return True


def minimum_input_size(model: nn.Module, probe: tuple[int, int] = (224, 224)) -> tuple[int, int] | None:
    """The smallest H and W the model accepts, found by running it (each of H and W searched with the other at
    a size that passes). None when not even `probe`, nor sizes up to 16 times larger, pass: then something
    other than size is wrong."""
    if _passes(model, (1, 1)):
        return 1, 1  # every ResNet: each stride-2 layer maps n to (n - 1) // 2 + 1, so 1x1 stays 1x1
    big = probe
    while not _passes(model, big):
        if big[0] > 16 * probe[0]:
            return None
        big = (big[0] * 2, big[1] * 2)

    def smallest(fits, hi: int) -> int:
        lo = 1  # fits(hi) holds; bisect for the first size that fits (sizes that fit form a ray upwards)
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
        return lo

    return (smallest(lambda h: _passes(model, (h, big[1])), big[0]),
            smallest(lambda w: _passes(model, (big[0], w)), big[1]))


def _trace_or_explain(model: nn.Module, arch: str, size: tuple[int, int]) -> list[Call]:
    try:
        return trace(model, size)
    except (RuntimeError, ValueError) as exc:
        error = exc
    least = minimum_input_size(model)
    h, w = size
    if least is not None and (h < least[0] or w < least[1]):
        raise UsageError(f"--input-size {h}x{w} is too small for {arch}: it takes inputs from "
                         f"{least[0]}x{least[1]} up") from None
    # Big enough, yet it fails (a size beyond what a tensor can index, say): say so, in one line.
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise UsageError(f"--input-size {h}x{w}: {arch} cannot run at this size ({reason})") from None


# ---- describing ops, blocks and stages --------------------------------------------------------------------

def _pair(value) -> tuple[int, int]:
    """A module's kernel/stride/padding, or a contract's stride, as (along H, along W)."""
    return (value, value) if isinstance(value, int) else tuple(value)


def _square(value):
    """A kernel/stride/padding as one int when it is the same along H and W (always, in this family)."""
    h, w = _pair(value)
    return h if h == w else [h, w]


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _macs(call: Call) -> int:
    """Multiply-accumulates of one call: each output element of a convolution sums in_channels / groups x
    kernel products; a linear layer's, in_features."""
    from torch import nn

    m = call.module
    if isinstance(m, nn.Conv2d):
        return math.prod(call.output) * (m.in_channels // m.groups) * math.prod(m.kernel_size)
    if isinstance(m, nn.Linear):
        return math.prod(call.output) * m.in_features
    return 0


def _op(call: Call) -> dict:
    """One module call as the contract's op: conv, bn, relu, maxpool, avgpool, linear (else its class name)."""
    from torch import nn

    m = call.module
    if isinstance(m, nn.Conv2d):
        return {"op": "conv", "name": call.name, "kernel": list(m.kernel_size), "stride": _square(m.stride),
                "padding": _square(m.padding), "in": m.in_channels, "out": m.out_channels, "groups": m.groups,
                "output": list(call.output), "params": _params(m), "macs": _macs(call)}
    if isinstance(m, nn.BatchNorm2d):
        return {"op": "bn", "name": call.name, "channels": m.num_features, "params": _params(m)}
    if isinstance(m, nn.ReLU):
        return {"op": "relu", "name": call.name}
    if isinstance(m, nn.MaxPool2d):
        return {"op": "maxpool", "name": call.name, "kernel": list(_pair(m.kernel_size)),
                "stride": _square(m.stride), "padding": _square(m.padding), "output": list(call.output)}
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return {"op": "avgpool", "name": call.name, "output": list(call.output)}
    if isinstance(m, nn.Linear):
        return {"op": "linear", "name": call.name, "in": m.in_features, "out": m.out_features,
                "output": list(call.output), "params": _params(m), "macs": _macs(call)}
    return {"op": type(m).__name__.lower(), "name": call.name, "output": list(call.output)}


def _chw(shape: tuple[int, ...]) -> list[int]:
    return list(shape) + [1] * (3 - len(shape))  # the logits (C,) read as C x 1 x 1


def _main_stride(leaf_calls: list[Call], shortcut_prefix: str | None) -> tuple[int, int] | None:
    """The product of the strides of the ops on the main path (shortcut excluded) as (along H, along W), or
    None where the path pools adaptively (the head): no fixed stride describes that."""
    from torch import nn

    main = [c for c in leaf_calls if shortcut_prefix is None or not c.name.startswith(shortcut_prefix)]
    if any(isinstance(c.module, nn.AdaptiveAvgPool2d) for c in main):
        return None
    strides = [_pair(c.module.stride) for c in main if hasattr(c.module, "stride")]
    return math.prod(s[0] for s in strides), math.prod(s[1] for s in strides)


def _stride_value(stride: tuple[int, int] | None) -> int | list[int] | None:
    return None if stride is None else _square(stride)


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def _unit(name: str, block: nn.Module | None, calls: list[Call]) -> dict:
    """One residual block (or the stem, or the head, as a unit without a shortcut):
    {"name", "block", "input", "output", "stride", "main": [op...], "shortcut", "merge": [op...], "params",
    "macs"}. shortcut: {"type": "identity"}, {"type": "projection", "ops": [conv 1x1, bn]}, or null outside
    residual blocks. merge: what follows the main path: [{"op": "add"}, {"op": "relu"}] in a block."""
    leaves = [c for c in calls if _is_leaf(c.module)]
    unit = {"name": name, "block": type(block).__name__ if block is not None else None,
            "input": _chw(leaves[0].input), "output": _chw(leaves[-1].output)}
    if block is None:
        unit.update(stride=_stride_value(_main_stride(leaves, None)), main=[_op(c) for c in leaves],
                    shortcut=None, merge=[])
        params = sum(_params(m) for m in {c.module for c in leaves})
    else:
        shortcut_module = getattr(block, "downsample", None)
        prefix = f"{name}.downsample." if shortcut_module is not None else None
        main = [c for c in leaves if prefix is None or not c.name.startswith(prefix)]
        # Every block of this family ends with relu(main + shortcut). The add is a tensor operation, not a
        # module, so no hook sees it: the block's last call is that ReLU, and the add sits right before it.
        *main, final = main
        unit.update(
            stride=_stride_value(_main_stride(leaves, prefix)),
            main=[_op(c) for c in main],
            shortcut={"type": "identity"} if prefix is None else
            {"type": "projection", "ops": [_op(c) for c in leaves if c.name.startswith(prefix)]},
            merge=[{"op": "add"}, _op(final)],
        )
        params = _params(block)
    unit.update(params=params, macs=sum(_macs(c) for c in leaves))
    return unit


def describe(arch_name: str, size: tuple[int, int] | str = (224, 224), blocks: bool = False) -> dict:
    """The architecture at input 3 x H x W, as the JSON contract: {"arch", "input", "stages": [{"name",
    "block", "blocks", "in_channels", "out_channels", "stride", "output", "params", "macs"(, "units")}],
    "params_total", "macs_total"}. Raises UsageError for an unknown architecture or an unusable size."""
    spec: ArchSpec = get_arch(arch_name)
    if isinstance(size, str):
        size = parse_input_size(size)
    model = _meta_model(spec.name)
    calls = _trace_or_explain(model, spec.name, size)

    # Stages from the model's own layout: its residual stages are the children named layerN; the children
    # before the first of them form the stem, those after the last the head.
    children = [n for n, _ in model.named_children()]
    layer_names = [n for n in children if re.fullmatch(r"layer\d+", n)]
    first, last = children.index(layer_names[0]), children.index(layer_names[-1])
    groups = [(STEM, children[:first])] + [(n, [n]) for n in layer_names] + [(HEAD, children[last + 1:])]

    def under(prefixes: list[str]):
        return [c for c in calls if any(c.name == p or c.name.startswith(p + ".") for p in prefixes)]

    stages = []
    for stage_name, members in groups:
        stage_calls = under(members)
        leaves = [c for c in stage_calls if _is_leaf(c.module)]
        if stage_name in (STEM, HEAD):
            block_class, count = None, None
            units = [_unit(stage_name, None, stage_calls)]
            stride = _main_stride(leaves, None)
        else:
            layer = model.get_submodule(stage_name)
            block_class = "/".join(sorted({type(b).__name__ for b in layer.children()}))
            count = len(layer)
            units = [_unit(f"{stage_name}.{i}", b, under([f"{stage_name}.{i}"]))
                     for i, b in enumerate(layer.children())]
            per_block = [_pair(u["stride"]) for u in units]
            stride = (math.prod(s[0] for s in per_block), math.prod(s[1] for s in per_block))
        stage = {
            "name": stage_name,
            "block": block_class,
            "blocks": count,
            "in_channels": leaves[0].input[0],
            "out_channels": leaves[-1].output[0],
            "stride": _stride_value(stride),
            "output": _chw(leaves[-1].output),
            "params": sum(_params(model.get_submodule(n)) for n in members),
            "macs": sum(_macs(c) for c in leaves),
        }
        if blocks:
            stage["units"] = units
        stages.append(stage)

    return {
        "arch": spec.name,
        "input": [3, *size],
        "stages": stages,
        "params_total": _params(model),
        "macs_total": sum(s["macs"] for s in stages),
    }


# ---- output -----------------------------------------------------------------------------------------------

def _count(n: int) -> str:
    """MACs for people, three significant digits or more: 4.09 G, 61.0 G, 118 M, 2.05 M, 512 K."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.2f} {unit}" if value < 10 else f"{value:.1f} {unit}" if value < 100 else \
                f"{value:.0f} {unit}"
    return str(n)


def _dims(shape: list[int]) -> str:
    return "×".join(str(d) for d in shape)


def _op_row(op: dict) -> list[str]:
    """The op, channels, stride, padding, groups and output columns of one op in the --blocks breakdown."""
    kind = op["op"]
    if kind == "conv":
        return [f"conv {_dims(op['kernel'])}", f"{op['in']}→{op['out']}", f"s{op['stride']}", f"p{op['padding']}",
                f"g{op['groups']}" if op["groups"] != 1 else "", _dims(op["output"])]
    if kind == "bn":
        return ["bn", str(op["channels"]), "", "", "", ""]
    if kind == "maxpool":
        return [f"maxpool {_dims(op['kernel'])}", "", f"s{op['stride']}", f"p{op['padding']}", "",
                _dims(op["output"])]
    if kind == "avgpool":
        return ["avgpool", "", "", "", "", _dims(op["output"])]
    if kind == "linear":
        return ["linear", f"{op['in']}→{op['out']}", "", "", "", _dims(op["output"])]
    return [kind, "", "", "", "", _dims(op["output"]) if "output" in op else ""]


def print_stages(d: dict, console) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title=f"[bold]{d['arch']}[/], input {_dims(d['input'])}", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    # blocks and block share a column ("23 × Bottleneck") so that the widest table still fits 80 columns.
    for col, justify in (("stage", "left"), ("blocks", "left"), ("channels", "right"), ("stride", "right"),
                         ("output", "right"), ("params", "right"), ("MACs", "right")):
        table.add_column(col, justify=justify, no_wrap=True)
    for s in d["stages"]:
        table.add_row(
            s["name"],
            "[dim]—[/]" if s["block"] is None else f"{s['blocks']:>2} × {s['block']}",
            f"{s['in_channels']}→{s['out_channels']}",
            "[dim]—[/]" if s["stride"] is None else str(s["stride"]),
            _dims(s["output"]),
            f"{s['params']:,}",
            _count(s["macs"]),
        )
    table.add_section()
    table.add_row("[bold]total[/]", "", "", "", "", f"[bold]{d['params_total']:,}[/]",
                  f"[bold]{_count(d['macs_total'])}[/]")
    console.print(table)
    console.print(f"[dim]{d['params_total']:,} parameters; {d['macs_total']:,} multiply-accumulates per image "
                  "(convolutions and the linear layer).\nstride: how much the stage divides H and W.[/]")


def print_blocks(d: dict, console) -> None:
    """The --blocks breakdown, laid out like the seed notes: per block a summary line (channels in→out, stride,
    output), then its main path op by op, its shortcut, and the merge (add, ReLU)."""
    from rich.table import Table

    for s in d["stages"]:
        console.print()
        what = f"{s['blocks']} × {s['block']}, " if s["block"] is not None else ""
        stride = "" if s["stride"] is None else f", stride {s['stride']}"
        console.print(f"[bold]{s['name']}[/]  {what}{s['in_channels']}→{s['out_channels']} channels{stride}, "
                      f"output {_dims(s['output'])}")
        table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 2, 0, 0))
        for justify in ("left", "left", "right", "right", "left", "left", "right"):
            table.add_column(justify=justify, no_wrap=True)
        for u in s["units"]:
            if u["block"] is None:  # stem, head: a plain sequence of layers
                for op in u["main"]:
                    table.add_row("  ", *_op_row(op))
                continue
            table.add_row(f"[bold]{u['name']}[/]", f"[dim]{u['block']}[/]", f"{u['input'][0]}→{u['output'][0]}",
                          f"s{u['stride']}", "", "", f"[bold]{_dims(u['output'])}[/]")
            for i, op in enumerate(u["main"]):
                table.add_row("  main" if i == 0 else "", *_op_row(op))
            if u["shortcut"]["type"] == "identity":
                table.add_row("  shortcut", "identity", "", "", "", "", "")
            else:
                for i, op in enumerate(u["shortcut"]["ops"]):
                    table.add_row("  shortcut" if i == 0 else "", *_op_row(op))
            merge = ", ".join("add shortcut" if op["op"] == "add" else op["op"] for op in u["merge"])
            table.add_row("  merge", merge, "", "", "", "", _dims(u["output"]))
        console.print(table)
