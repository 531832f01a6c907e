"""`resnet-classify arch`: what it prints equals what torchvision's own models do.

The reference is torchvision's model, measured here and nowhere else: forward hooks on the last module of each
stage give the stage's output shape, torch's FlopCounterMode gives its multiply-accumulates (2 FLOPs each),
and its parameters are counted directly. The sweep runs torchvision's model on the meta device (shapes without
arithmetic, so every architecture at every size takes seconds); `test_meta_shapes_match_a_real_forward` checks
on real tensors that the meta device gives the same shapes.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resnet_cli.models import explorer, registry
from resnet_cli.cli import run
from resnet_cli.core.errors import UsageError

ARCHS = list(registry.architectures())
SIZES = [(224, 224), (32, 32), (375, 500), (97, 131)]

# torchvision's top-level modules, grouped into the stages the explorer reports.
STAGE_MODULES = {
    "stem": ("conv1", "bn1", "relu", "maxpool"),
    "layer1": ("layer1",),
    "layer2": ("layer2",),
    "layer3": ("layer3",),
    "layer4": ("layer4",),
    "head": ("avgpool", "fc"),
}
CONTRACT_KEYS = {"arch", "input", "stages", "params_total", "macs_total"}
STAGE_KEYS = {"name", "block", "blocks", "in_channels", "out_channels", "stride", "output", "params", "macs"}


@functools.lru_cache(maxsize=None)
def torchvision_on_meta(arch: str) -> nn.Module:
    with torch.device("meta"):
        return torchvision.models.get_model(arch, weights=None).eval()


def measure(model: nn.Module, size: tuple[int, int], device: str = "meta") -> dict[str, dict]:
    """Each stage of torchvision's `model` at 1x3xHxW: output [C, H, W] (the logits as [classes, 1, 1], the
    explorer's documented convention), parameters, multiply-accumulates."""
    outputs: dict[str, list[int]] = {}

    def hook(stage):
        def record(module, args, output):
            shape = list(output.shape[1:])
            outputs[stage] = shape + [1] * (3 - len(shape))
        return record

    hooks = [model.get_submodule(mods[-1]).register_forward_hook(hook(stage))
             for stage, mods in STAGE_MODULES.items()]
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model(torch.zeros(1, 3, *size, device=device))
    finally:
        for h in hooks:
            h.remove()
    flops = counter.get_flop_counts()
    root = type(model).__name__
    return {
        stage: {
            "output": outputs[stage],
            "params": sum(p.numel() for m in mods for p in model.get_submodule(m).parameters()),
            "macs": sum(sum(flops.get(f"{root}.{m}", {}).values()) for m in mods) // 2,
        }
        for stage, mods in STAGE_MODULES.items()
    }


def cli_json(capsys, *argv: str) -> dict:
    code = run(["arch", *argv, "--format", "json"])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)


# ---- the numbers equal torchvision's --------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("arch", ARCHS)
def test_stages_match_torchvision(arch, size):
    ref_model = torchvision_on_meta(arch)
    ref = measure(ref_model, size)
    d = explorer.describe(arch, size)

    assert d["arch"] == arch and d["input"] == [3, *size]
    assert [s["name"] for s in d["stages"]] == list(STAGE_MODULES)
    for s in d["stages"]:
        assert (s["output"], s["params"], s["macs"]) == \
               (ref[s["name"]]["output"], ref[s["name"]]["params"], ref[s["name"]]["macs"]), s["name"]
    assert d["params_total"] == sum(p.numel() for p in ref_model.parameters())
    assert d["macs_total"] == sum(r["macs"] for r in ref.values())
    # Channels chain from the image's 3 to the 1000 classes, each stage starting where the last one ended.
    channels = [3] + [s["output"][0] for s in d["stages"]]
    assert [(s["in_channels"], s["out_channels"]) for s in d["stages"]] == list(zip(channels, channels[1:]))


@pytest.mark.parametrize("arch", ARCHS)
def test_macs_at_224_equal_torchvision_published_gflops(arch):
    published = registry.get_arch(arch).default_weights.gflops * 1e9
    assert explorer.describe(arch, (224, 224))["macs_total"] == pytest.approx(published, rel=0.01)


@pytest.mark.parametrize("arch, size", [("resnet18", (97, 131)), ("resnext50_32x4d", (32, 32))])
def test_meta_shapes_match_a_real_forward(arch, size):
    torch.manual_seed(0)
    real = torchvision.models.get_model(arch, weights=None).eval()
    ref = measure(real, size, device="cpu")
    d = explorer.describe(arch, size)
    assert {s["name"]: {"output": s["output"], "params": s["params"], "macs": s["macs"]} for s in d["stages"]} == ref


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnext101_64x4d"])
def test_strides_and_block_counts_follow_the_model(arch):
    spec = registry.get_arch(arch)
    stages = explorer.describe(arch, (97, 131))["stages"]
    block = {"basic": "BasicBlock", "bottleneck": "Bottleneck"}[spec.block]
    assert [(s["block"], s["blocks"]) for s in stages] == \
           [(None, None)] + [(block, n) for n in spec.layers] + [(None, None)]
    assert [s["stride"] for s in stages] == [4, 1, 2, 2, 2, None]


# ---- --blocks: every block, as torchvision builds it ----------------------------------------------------

def _conv_signature(conv: nn.Conv2d) -> tuple:
    return (list(conv.kernel_size), conv.stride[0], conv.in_channels, conv.out_channels, conv.groups)


def _op_signature(op: dict) -> tuple:
    return (op["kernel"], op["stride"], op["in"], op["out"], op["groups"])


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"])
def test_units_are_torchvision_blocks(arch):
    tv = torchvision_on_meta(arch)
    d = explorer.describe(arch, (97, 131), blocks=True)
    for stage in d["stages"][1:-1]:
        layer = tv.get_submodule(stage["name"])
        units = stage["units"]
        assert [u["name"] for u in units] == [f"{stage['name']}.{i}" for i in range(len(layer))]
        # Blocks chain: each starts where the last ended, the last ends where the stage does.
        assert all(a["output"] == b["input"] for a, b in zip(units, units[1:]))
        assert units[-1]["output"] == stage["output"]
        assert sum(u["params"] for u in units) == stage["params"]
        assert sum(u["macs"] for u in units) == stage["macs"]
        for u, tv_block in zip(units, layer):
            tv_convs = [m for n, m in sorted(tv_block.named_children()) if n.startswith("conv")]
            main_convs = [op for op in u["main"] if op["op"] == "conv"]
            assert [_op_signature(op) for op in main_convs] == [_conv_signature(c) for c in tv_convs]
            kinds = [op["op"] for op in u["main"]]
            relu_between = ["conv", "bn", "relu"] * (len(tv_convs) - 1) + ["conv", "bn"]
            assert kinds == relu_between, "ReLU after every conv+BN except the last, which the add follows"
            assert [op["op"] for op in u["merge"]] == ["add", "relu"]
            if tv_block.downsample is None:
                assert u["shortcut"] == {"type": "identity"}
                assert u["input"] == u["output"]
            else:
                conv, bn = tv_block.downsample
                assert u["shortcut"]["type"] == "projection"
                assert [op["op"] for op in u["shortcut"]["ops"]] == ["conv", "bn"]
                assert _op_signature(u["shortcut"]["ops"][0]) == _conv_signature(conv)
                assert u["shortcut"]["ops"][0]["output"] == u["output"]
    stem, head = d["stages"][0]["units"], d["stages"][-1]["units"]
    assert [op["op"] for op in stem[0]["main"]] == ["conv", "bn", "relu", "maxpool"]
    assert [op["op"] for op in head[0]["main"]] == ["avgpool", "linear"]
    assert stem[0]["shortcut"] is None and head[0]["shortcut"] is None


def test_the_seed_notes_mistakes_are_not_repeated(capsys):
    """What docs_explorer_section.md says the notes got wrong, as the tool prints it."""
    r18 = {s["name"]: s for s in cli_json(capsys, "resnet18", "--blocks")["stages"]}
    layer3_1 = r18["layer3"]["units"][1]
    assert (layer3_1["input"][0], layer3_1["output"][0]) == (256, 256)  # the note: 256 -> 128
    assert {op["out"] for op in layer3_1["main"] if op["op"] == "conv"} == {256}
    layer4_1 = r18["layer4"]["units"][1]
    assert layer4_1["input"] == layer4_1["output"] == [512, 7, 7]  # the note: input 256, a stride-2 conv
    assert [op["stride"] for op in layer4_1["main"] if op["op"] == "conv"] == [1, 1]
    layer2_0 = r18["layer2"]["units"][0]
    assert [op["op"] for op in layer2_0["main"]] == ["conv", "bn", "relu", "conv", "bn"]  # the note: no ReLU
    assert [op["op"] for op in r18["stem"]["units"][0]["main"]] == ["conv", "bn", "relu", "maxpool"]

    r50 = {s["name"]: s for s in cli_json(capsys, "resnet50", "--blocks")["stages"]}
    for unit in r50["layer2"]["units"][1:]:  # the note: stride 2 on the 3x3 of Bottleneck_2..4 too
        assert [op["stride"] for op in unit["main"] if op["op"] == "conv"] == [1, 1, 1]
    assert r50["layer2"]["units"][0]["main"][3]["stride"] == 2  # the stride sits on the 3x3 (ResNet v1.5)
    assert [u["input"][0] for u in r50["layer3"]["units"][1:]] == [1024] * 5  # the note: 256
    assert (r50["layer4"]["blocks"], r50["layer4"]["units"][0]["input"]) == (3, [1024, 14, 14])


# ---- the command line -----------------------------------------------------------------------------------

def test_json_is_the_documented_contract(capsys):
    d = cli_json(capsys, "resnet50")
    assert set(d) == CONTRACT_KEYS
    assert all(set(s) == STAGE_KEYS for s in d["stages"])
    assert d["input"] == [3, 224, 224]
    assert d["stages"][-1]["output"] == [1000, 1, 1]
    assert d["params_total"] == registry.get_arch("resnet50").default_weights.num_params


def test_blocks_adds_units_to_every_stage(capsys):
    d = cli_json(capsys, "resnet34", "--input-size", "375x500", "--blocks")
    assert d["input"] == [3, 375, 500]
    assert all(set(s) == STAGE_KEYS | {"units"} for s in d["stages"])
    assert [len(s["units"]) for s in d["stages"]] == [1, 3, 4, 6, 3, 1]
    assert d["stages"][0]["output"] == [64, 94, 125]  # 375 -> 188 -> 94, 500 -> 250 -> 125


def test_one_pixel_passes_the_whole_network(capsys):
    d = cli_json(capsys, "resnet152", "--input-size", "1")
    assert [s["output"][1:] for s in d["stages"]] == [[1, 1]] * 6


def test_table_shows_every_stage_and_the_totals(capsys):
    assert run(["arch", "resnet18"]) == 0
    out = capsys.readouterr().out
    for name in STAGE_MODULES:
        assert name in out
    assert "2 × BasicBlock" in out
    assert "11,689,512" in out  # torchvision's parameter count, uncut even when piped
    assert "1.81 G" in out  # torchvision publishes 1.814 GFLOPS
    assert "512×7×7" in out


def test_table_with_blocks_shows_main_paths_and_shortcuts(capsys):
    assert run(["arch", "resnet50", "--blocks"]) == 0
    out = capsys.readouterr().out
    assert "layer4.2" in out and "layer4.3" not in out
    assert "identity" in out and "shortcut" in out
    assert "256→512" in out  # layer2.0's projection


def test_unknown_architecture_suggests_the_closest(capsys):
    assert run(["arch", "resnet5"]) == 2
    captured = capsys.readouterr()
    assert "did you mean resnet50?" in captured.err
    assert captured.out == ""


@pytest.mark.parametrize("size", ["abc", "0", "-3", "3x", "224x0", "1x2x3", "22.4"])
def test_a_malformed_input_size_is_a_one_line_usage_error(capsys, size):
    assert run(["arch", "resnet18", "--input-size", size]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "--input-size" in captured.err and "HxW" in captured.err


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_formats_other_than_table_and_json_are_refused(capsys, fmt):
    assert run(["arch", "resnet18", "--format", fmt]) == 2
    err = capsys.readouterr().err
    assert f"--format {fmt}: use table or json" in err


# ---- the minimum input size comes from the model --------------------------------------------------------

def test_minimum_input_size_is_found_by_running_the_model():
    with torch.device("meta"):
        no_padding = nn.Sequential(nn.Conv2d(3, 4, (5, 3)), nn.Conv2d(4, 4, 3, stride=2))
    # Along H a 5-tall then a 3-tall kernel, along W two 3-wide ones: 7 and 5 rows/columns at least.
    assert explorer.minimum_input_size(no_padding) == (7, 5)
    assert explorer.minimum_input_size(torchvision_on_meta("resnet50")) == (1, 1)


def test_too_small_an_input_names_the_minimum():
    with torch.device("meta"):
        no_padding = nn.Sequential(nn.Conv2d(3, 4, 5), nn.Conv2d(4, 4, 3, stride=2))
    with pytest.raises(UsageError, match=r"6x40 is too small for toy: it takes inputs from 7x7 up"):
        explorer._trace_or_explain(no_padding, "toy", (6, 40))
