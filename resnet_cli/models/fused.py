"""CPU inference through oneDNN's fused kernels, ready at once (no compilation).

What `torch.compile` with freezing does for a ResNet on the CPU, done ahead of time from the module: fold each
BatchNorm into the convolution before it, pre-pack the weights into oneDNN's blocked layout for the batch
shape, and run conv+ReLU and conv+add+ReLU (the residual join) as single kernels, in channels_last: as
fast as the compiled model and ready at once (docs/benchmarks.md has the measurements). Folding BN changes
float rounding only: tests/models/test_model.py and tests/models/test_model_reference.py prove the top-5 equal
to torchvision's reference and
the probabilities within 1e-4.

These are the mkldnn operators Inductor itself emits; where the build lacks them, `available()` is False and
the caller keeps the eager module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .model import BasicBlock, Bottleneck, ResNet


def available() -> bool:
    try:
        return (torch.backends.mkldnn.is_available()
                and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
                and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight"))
    except (AttributeError, RuntimeError):
        return False


def bf16_supported() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class _ConvBN:
    """One convolution with its BatchNorm folded in and its weight pre-packed; optional fused ReLU."""

    def __init__(self, conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d, relu: bool, dtype: torch.dtype,
                 input_size: list[int]) -> None:
        # Folded in float64, rounded once: the folded weights are as close to the originals as fp32 allows.
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        weight = (conv.weight.double() * scale.view(-1, 1, 1, 1)).to(dtype)
        self.bias = (bn.bias.double() - bn.running_mean.double() * scale).to(dtype)
        self.args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        self.weight = torch.ops.mkldnn._reorder_convolution_weight(weight, *self.args, input_size)
        self.attr = "relu" if relu else "none"

    def __call__(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, *self.args, self.attr, [None], "")

    def add_relu_into(self, x: Tensor, residual: Tensor) -> Tensor:
        """relu(conv(x) + residual), written into `residual`'s memory."""
        return torch.ops.mkldnn._convolution_pointwise_.binary(
            residual, x, self.weight, self.bias, *self.args, "add", 1.0, "relu", [None], "")


def _conv_out(conv: torch.nn.Conv2d, shape: list[int]) -> list[int]:
    def size(n: int, k: int, s: int, p: int, d: int) -> int:
        return (n + 2 * p - d * (k - 1) - 1) // s + 1

    h = size(shape[2], conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0])
    w = size(shape[3], conv.kernel_size[1], conv.stride[1], conv.padding[1], conv.dilation[1])
    return [shape[0], conv.out_channels, h, w]


class FusedResNet:
    """Callable (N, 3, H, W) channels_last tensor of `dtype` -> (N, classes) float32 logits."""

    def __init__(self, model: ResNet, dtype: torch.dtype = torch.float32, batch_size: int = 8,
                 image_size: int = 224) -> None:
        self.dtype = dtype
        # The packed layout is chosen for the shapes of this batch size and image size (tracked here by
        # arithmetic: tracing on the meta device would import torch._dynamo, 2 s of start-up); other batch
        # sizes still run, a little slower.
        shape = [batch_size, 3, image_size, image_size]

        def fold(conv, bn, relu, in_shape):
            return _ConvBN(conv, bn, relu, dtype, in_shape), _conv_out(conv, in_shape)

        with torch.no_grad():
            self.stem, shape = fold(model.conv1, model.bn1, True, shape)
            shape = [shape[0], shape[1], (shape[2] - 1) // 2 + 1, (shape[3] - 1) // 2 + 1]  # max-pool 3/2/1
            self.blocks = []
            for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
                for blk in layer:
                    if isinstance(blk, Bottleneck):
                        pairs = [(blk.conv1, blk.bn1), (blk.conv2, blk.bn2), (blk.conv3, blk.bn3)]
                    elif isinstance(blk, BasicBlock):
                        pairs = [(blk.conv1, blk.bn1), (blk.conv2, blk.bn2)]
                    else:
                        raise TypeError(f"unknown block {type(blk).__name__}")
                    down = None
                    if blk.downsample is not None:
                        down, _ = fold(blk.downsample[0], blk.downsample[1], False, shape)
                    convs = []
                    for i, (conv, bn) in enumerate(pairs):
                        fused, shape = fold(conv, bn, i < len(pairs) - 1, shape)
                        convs.append(fused)
                    self.blocks.append((convs[:-1], convs[-1], down))
            self.fc_weight = model.fc.weight.detach().to(dtype)
            self.fc_bias = model.fc.bias.detach().to(dtype)

    def __call__(self, x: Tensor) -> Tensor:
        return F.linear(self.features(x), self.fc_weight, self.fc_bias).float()

    def features(self, x: Tensor) -> Tensor:
        """The globally average-pooled layer4 map, (N, channels), in the run's dtype."""
        return self.layer4(x).mean((2, 3))

    def layer4(self, x: Tensor) -> Tensor:
        """The last block's output, (N, channels, h, w): what the pooling and the head receive."""
        x = F.max_pool2d(self.stem(x), kernel_size=3, stride=2, padding=1)
        for main, last, down in self.blocks:
            # The residual buffer receives the block's output. The first block's input is the max-pool's fresh
            # tensor, and each later input is the previous block's output, read here for the last time: both
            # can be overwritten.
            residual = down(x) if down is not None else x
            out = x
            for conv in main:
                out = conv(out)
            x = last.add_relu_into(out, residual)
        return x

    def head(self, x: Tensor) -> Tensor:
        """Logits, as `__call__` gives them, from `layer4`'s output."""
        return F.linear(x.mean((2, 3)), self.fc_weight, self.fc_bias).float()
