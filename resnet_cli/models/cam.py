"""Class activation maps: where in the crop the network found its answer (`resnet-classify explain`).

Three methods, each a weighting of one block's output activations A (N, C, h, w) by the gradient G of the
target class's logit with respect to them:

    gradcam    sum_c mean_hw(G)_c * A_c                                  (Selvaraju et al. 2017)
    gradcam++  sum_c (sum_hw relu(G) * alpha)_c * A_c, alpha = G^2 / (2 G^2 + sum_hw(A) G^3 + 1e-6), 0 where
               G = 0                                                      (Chattopadhay et al. 2018)
    layercam   sum_c relu(G)_c * A_c                                      (Jiang et al. 2021)

then normalised as pytorch-grad-cam does it, so its maps and ours agree (tests/cli/commands/test_explain.py):
ReLU, min-max per image (x - min, / (1e-7 + max)), bilinear upsampling to the crop size (OpenCV's
INTER_LINEAR: half-pixel centres, edges clamped, no antialiasing), min-max again.

The methods are implemented here rather than taken from the grad-cam package, which is the tests' oracle
(benchmarks/explain_oracle.py measures both; docs/explain.md has the numbers): importing it brings
torchvision, scikit-learn, pandas, scipy, matplotlib and OpenCV; it runs the unfused network and computes the
gradient of every parameter; and between calls it keeps the last batch's output, autograd graph and
parameter gradients alive. Here, at layer4's last block on the CPU, the map comes from classify's
own fused forward pass (inference.Predictor.explain), and a map costs a forward and backward pass of the
pooling and the head; at an earlier block, a forward pass of the eager network up to the block, and from there
a forward and backward pass in which only the activations require a gradient. Nothing is computed for the
parameters and nothing outlives the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.errors import UsageError
from .registry import ArchSpec

def block_names(arch: ArchSpec) -> list[str]:
    """Every residual block's name in execution order, as `arch --blocks` prints them: layer1.0 ... layer4.2."""
    return [f"layer{s + 1}.{b}" for s, n in enumerate(arch.layers) for b in range(n)]


def resolve_layer(name: str, arch: ArchSpec) -> str:
    """The block `--layer` names: a stage (`layer3`: its last block) or a block (`layer3.1`). A usage error
    lists the valid names."""
    names = block_names(arch)
    key = name.strip().lower()
    if key in {f"layer{s + 1}" for s in range(len(arch.layers))}:
        stage = int(key[5:])
        return f"{key}.{arch.layers[stage - 1] - 1}"
    if key in names:
        return key
    stages = ", ".join(f"layer{s + 1}" for s in range(len(arch.layers)))
    raise UsageError(f"--layer {name}: {arch.name} has no such layer; give a stage ({stages}) or one of its "
                     f"blocks ({names[0]} ... {names[-1]}, as `resnet-classify arch {arch.name} --blocks` lists "
                     f"them)")


def block_position(name: str, arch: ArchSpec) -> int:
    """The block's index among all residual blocks, in execution order."""
    return block_names(arch).index(name)


def block_count(module: nn.Module) -> int:
    return len(_blocks(module))


def _blocks(module: nn.Module) -> list[nn.Module]:
    return [blk for layer in (module.layer1, module.layer2, module.layer3, module.layer4) for blk in layer]


def eager_prefix(module: nn.Module, x: Tensor, position: int) -> Tensor:
    """The output of block number `position` (the stem and every block up to it)."""
    x = module.stem(x)
    for blk in _blocks(module)[:position + 1]:
        x = blk(x)
    return x


def eager_suffix(module: nn.Module, a: Tensor, position: int) -> Tensor:
    """The logits from block number `position`'s output: the blocks after it, the pooling and the head."""
    for blk in _blocks(module)[position + 1:]:
        a = blk(a)
    return module.fc(torch.flatten(module.avgpool(a), 1))


def weigh(method: str, a: Tensor, g: Tensor) -> Tensor:
    """(N, h, w) raw map of one method from activations `a` and gradients `g`, both (N, C, h, w) float32."""
    if method == "gradcam":
        weights = g.mean((2, 3))
        return (weights[:, :, None, None] * a).sum(1)
    if method == "gradcam++":
        g2 = g * g
        g3 = g2 * g
        sum_a = a.sum((2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        weights = (g.clamp(min=0) * alpha).sum((2, 3))
        return (weights[:, :, None, None] * a).sum(1)
    if method == "layercam":
        return (g.clamp(min=0) * a).sum(1)
    raise ValueError(f"unknown method {method!r}")


def _min_max(x: Tensor) -> Tensor:
    flat = x.flatten(1)
    x = x - flat.min(1).values[:, None, None]
    return x / (1e-7 + x.flatten(1).max(1).values[:, None, None])


def normalise(cam: Tensor, size: int) -> Tensor:
    """(N, h, w) raw maps -> (N, size, size) float32 in [0, 1], pytorch-grad-cam's normalisation."""
    cam = _min_max(cam.float().clamp(min=0))
    cam = F.interpolate(cam[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return _min_max(cam.clamp(min=0))


def maps(method: str, suffix, a: Tensor, targets: Tensor, size: int) -> Tensor:
    """(N, size, size) normalised maps of `targets` (N,) from block activations `a`: one forward and backward
    pass through `suffix` (activations -> logits) in which only `a` requires a gradient."""
    a = a.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = suffix(a)
        score = logits.gather(1, targets.view(-1, 1).to(logits.device)).sum()
        (g,) = torch.autograd.grad(score, a)
    return normalise(weigh(method, a.detach().float(), g.float()), size)
