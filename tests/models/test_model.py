"""The project's ResNet family equals torchvision's: same state-dict layout, same outputs."""

from __future__ import annotations

import pytest
import torch
import torchvision

from resnet_cli.models import fused, model, registry

ARCHS = list(registry.architectures())


@pytest.mark.parametrize("arch", ARCHS)
def test_same_layout_and_same_outputs_as_torchvision(arch):
    torch.manual_seed(0)
    ref = torchvision.models.get_model(arch, weights=None).eval()
    ours = model.build(registry.get_arch(arch))
    ref_state = ref.state_dict()
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == \
           [(k, tuple(v.shape)) for k, v in ref_state.items()]
    ours.load_state_dict(ref_state, assign=True)  # strict: every key, nothing extra
    ours.eval()
    x = torch.randn(2, 3, 96, 80, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_fused_cpu_path_matches_the_eager_module(arch, checkpoint):
    """BN folding and fused kernels change rounding only; checked on calibrated seeded weights."""
    assert fused.available()  # x86 builds of torch have oneDNN; the product falls back to eager elsewhere
    spec = registry.get_arch(arch)
    m = model.build(spec)
    m.load_state_dict(torch.load(checkpoint(arch), weights_only=True), assign=True)
    m.eval()
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        eager = m(x)
        fast = fused.FusedResNet(m, torch.float32, batch_size=3)(x.contiguous(memory_format=torch.channels_last))
        other_batch = fused.FusedResNet(m, torch.float32, batch_size=8)(
            x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(fast, eager, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(other_batch, eager, atol=2e-4, rtol=1e-4)
    assert torch.equal(fast.topk(5).indices, eager.topk(5).indices)


def test_without_onednn_fusion_the_eager_path_gives_the_same_answers(checkpoint, monkeypatch):
    """Builds without the mkldnn operators (other CPUs, other torch builds) fall back to the eager module."""
    from PIL import Image

    from checkpoints import PHOTOS
    from resnet_cli.models.inference import Predictor
    from resnet_cli.models.preprocess import resize_and_crop

    spec = registry.get_arch("resnet18")
    pre = spec.default_weights.preprocess
    crops = b"".join(resize_and_crop(Image.open(p).convert("RGB"), pre).tobytes() for p in PHOTOS)
    batch = torch.frombuffer(bytearray(crops), dtype=torch.uint8).view(len(PHOTOS), pre.crop, pre.crop, 3)
    results = []
    for fusion in (True, False):
        monkeypatch.setattr(fused, "available", lambda: fusion)
        m = model.build(spec)
        m.load_state_dict(torch.load(checkpoint("resnet18"), weights_only=True), assign=True)
        predictor = Predictor(m.eval(), pre, device=torch.device("cpu"), dtype=torch.float32)
        assert isinstance(predictor.forward, fused.FusedResNet) == fusion
        results.append(predictor.classify(batch, 5))
    (p_fused, i_fused), (p_eager, i_eager) = results
    assert torch.equal(i_fused, i_eager)
    torch.testing.assert_close(p_fused, p_eager, atol=1e-5, rtol=0)
