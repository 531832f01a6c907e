"""torchvision's int8 ResNets (`torchvision.models.quantization.resnet*(quantize=True)`), without torchvision.

torchvision builds them by eager-mode post-training quantization of its `QuantizableResNet`: each conv fused
with its BatchNorm (and ReLU where one follows: ConvReLU2d), weights int8 per output channel, activations
quint8 per tensor, the residual add and its ReLU one quantized `add_relu` (a FloatFunctional), a QuantStub before
the stem and a DeQuantStub after the head; the model is then converted for its engine (`fbgemm`) and the
published state dict loaded into it. Here the converted modules are built directly, with the same names, from
the float architecture's shapes (model.py, built on the meta device: no memory, no initialisation), so the very
same state dict loads unchanged and the very same quantized kernels run in the very same order: the outputs are
torchvision's to the bit (tests/models/test_quantized.py).

The engine: torch's `fbgemm` quantized backend (x86), the one the published weights were calibrated for and
torchvision builds them with. The same state dict run on the `x86`/`onednn` engines moves probabilities by up to
0.067, so it is set for every forward pass. The network runs on the CPU only, in fp32 around the int8 layers.

Quantized tensors are read with `torch.load(weights_only=True)` like every checkpoint (state_dicts.py): a
quantized state dict holds quantized tensors, each Linear's packed (weight, bias) pair and its dtype, and
nothing else is accepted.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from .registry import ArchSpec

ENGINE = "fbgemm"


@contextlib.contextmanager
def engine(name: str = ENGINE):
    """torch.backends.quantized.engine set to `name` for the block, restored after. Raises UsageError where
    this build of torch lacks it (fbgemm is x86-only)."""
    from ..core.errors import UsageError

    if name not in torch.backends.quantized.supported_engines:
        raise UsageError(f"int8 weights need torch's {name} quantized engine, which this machine's torch lacks "
                         f"(it has: {', '.join(e for e in torch.backends.quantized.supported_engines if e != 'none')})")
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def _qconv(conv: nn.Conv2d, relu: bool) -> nn.Module:
    """The converted form of `conv` fused with its BatchNorm (bias from the fold) and, with `relu`, its ReLU."""
    from torch.ao.nn import intrinsic, quantized

    cls = intrinsic.quantized.ConvReLU2d if relu else quantized.Conv2d
    return cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
               dilation=conv.dilation, groups=conv.groups, bias=True)


def _downsample(block: nn.Module) -> nn.Module | None:
    if block.downsample is None:
        return None
    return nn.Sequential(_qconv(block.downsample[0], relu=False), nn.Identity())


class QuantizedBasicBlock(nn.Module):
    """torchvision's QuantizableBasicBlock, fused and converted: conv1+bn1+relu, conv2+bn2, add_relu."""

    def __init__(self, block: nn.Module) -> None:
        from torch.ao.nn.quantized import QFunctional

        super().__init__()
        self.conv1 = _qconv(block.conv1, relu=True)
        self.bn1, self.relu = nn.Identity(), nn.Identity()
        self.conv2 = _qconv(block.conv2, relu=False)
        self.bn2 = nn.Identity()
        self.downsample = _downsample(block)
        self.add_relu = QFunctional()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv2(self.conv1(x))
        return self.add_relu.add_relu(out, identity)


class QuantizedBottleneck(nn.Module):
    """torchvision's QuantizableBottleneck, fused and converted: conv1+bn1+relu1, conv2+bn2+relu2, conv3+bn3,
    skip_add_relu."""

    def __init__(self, block: nn.Module) -> None:
        from torch.ao.nn.quantized import QFunctional

        super().__init__()
        self.conv1 = _qconv(block.conv1, relu=True)
        self.bn1, self.relu1 = nn.Identity(), nn.Identity()
        self.conv2 = _qconv(block.conv2, relu=True)
        self.bn2, self.relu2 = nn.Identity(), nn.Identity()
        self.conv3 = _qconv(block.conv3, relu=False)
        self.bn3 = nn.Identity()
        self.relu = nn.Identity()
        self.downsample = _downsample(block)
        self.skip_add_relu = QFunctional()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv3(self.conv2(self.conv1(x)))
        return self.skip_add_relu.add_relu(out, identity)


class QuantizedResNet(nn.Module):
    """torchvision's QuantizableResNet after `quantize_model`: (N, 3, H, W) float32 in, (N, classes) float32
    logits out; int8 inside. `features` gives the (N, 512 * expansion) float32 vector the head receives
    (dequantized), as model.ResNet.features does. Build with `build`, then `load_state_dict`."""

    quantized = True  # inference.Predictor runs it as it is: CPU, fp32 in and out, the fbgemm engine

    def __init__(self, arch: ArchSpec, num_classes: int = 1000) -> None:
        from torch.ao.nn.quantized import DeQuantize, Linear, Quantize

        from .model import build

        super().__init__()
        float_net = build(arch, num_classes)  # on the meta device: only its shapes are read
        self.conv1 = _qconv(float_net.conv1, relu=True)
        self.bn1, self.relu = nn.Identity(), nn.Identity()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        block = QuantizedBasicBlock if arch.block == "basic" else QuantizedBottleneck
        for name in ("layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, nn.Sequential(*(block(b) for b in getattr(float_net, name))))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = Linear(float_net.fc.in_features, num_classes)
        self.quant = Quantize(1.0, 0, torch.quint8)
        self.dequant = DeQuantize()

    def _quantized_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(self.quant(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def features(self, x: Tensor) -> Tensor:
        with engine():
            return self.dequant(self._quantized_features(x))

    def forward(self, x: Tensor) -> Tensor:
        with engine():
            return self.dequant(self.fc(self._quantized_features(x)))


def build(arch: ArchSpec, state_dict: dict, source: str) -> QuantizedResNet:
    """The int8 network of `arch` with this quantized state dict (torchvision's layout), in eval mode.
    Raises UsageError naming the first key that is missing, unexpected or of another shape."""
    from ..core.errors import UsageError

    fc = state_dict.get("fc._packed_params._packed_params")
    if not isinstance(fc, tuple) or not fc or not isinstance(fc[0], Tensor) or fc[0].dim() != 2:
        raise UsageError(f"checkpoint {source} is not an int8 {arch.name}: it has no quantized fc head")
    with engine():
        model = QuantizedResNet(arch, num_classes=fc[0].shape[0])
        expected = model.state_dict()
        for key, want in expected.items():
            got = state_dict.get(key)
            if got is None:
                raise UsageError(f"checkpoint {source} does not fit int8 {arch.name}: missing key {key!r}")
            if isinstance(want, Tensor) and (not isinstance(got, Tensor) or got.shape != want.shape
                                             or got.dtype != want.dtype):
                raise UsageError(f"checkpoint {source} does not fit int8 {arch.name}: {key!r} is "
                                 f"{_describe(got)}, int8 {arch.name} needs {_describe(want)}")
        extra = [k for k in state_dict if k not in expected]
        if extra:
            raise UsageError(f"checkpoint {source} does not fit int8 {arch.name}: unexpected key {extra[0]!r}")
        model.load_state_dict(state_dict)
    return model.eval()


def _describe(value) -> str:
    if isinstance(value, Tensor):
        return f"{str(value.dtype).removeprefix('torch.')} {tuple(value.shape)}"
    return type(value).__name__
