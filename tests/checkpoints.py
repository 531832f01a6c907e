"""Seeded checkpoints in torchvision's layout, for the tests and the benchmark (published weights cannot be
downloaded here).

torchvision's builder with a fixed seed; BatchNorm statistics calibrated on the sample photos, so activations
behave like a trained network's instead of exploding or vanishing through 50 layers; residual branches scaled
down as in a trained network; the head scaled so logits spread like a trained model's (std 4). Saved with
`torch.save(model.state_dict())`, exactly as torchvision's files are.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"
PHOTOS = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".png"))


def make_checkpoint(arch: str, path: Path, seed: int = 0, num_classes: int = 1000) -> Path:
    import torch
    import torchvision
    from PIL import Image

    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    tf = weights.transforms()
    photos = torch.stack([tf(Image.open(p).convert("RGB")) for p in PHOTOS])
    last_bns = {id(blk.bn3 if hasattr(blk, "bn3") else blk.bn2)
                for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for blk in layer}
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration pass
            with torch.no_grad():
                # Trained ResNets keep each residual branch small next to the identity path (the reason for
                # torchvision's zero_init_residual); a random net with full-size branches is chaotic and would
                # amplify float rounding far beyond what real weights do.
                m.weight.uniform_(0.1, 0.4) if id(m) in last_bns else m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.train()
    with torch.no_grad():
        model(photos)
    model.eval()
    with torch.no_grad():
        logits = model(photos)
        scale = 4.0 / logits.std().clamp_min(1e-6)
        model.fc.weight.mul_(scale)
        model.fc.bias.mul_(scale)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.1
    torch.save(model.state_dict(), path)
    return path


def make_quantized_checkpoint(arch: str, path: Path, seed: int = 0) -> Path:
    """A seeded stand-in for torchvision's int8 weights of `arch`, made as torchvision made them (eager-mode
    post-training quantization, `torchvision.models.quantization.utils.quantize_model`'s fbgemm qconfig: a
    MinMax observer per tensor for activations, per channel for weights): the seeded float checkpoint above
    loaded into torchvision's QuantizableResNet, fused, calibrated on the sample photos, converted and saved with
    `torch.save(model.state_dict())`."""
    import torch
    import torchvision
    from PIL import Image
    from torchvision.models import quantization

    float_path = make_checkpoint(arch, path.with_name(path.stem + "-float.pth"), seed)
    torch.backends.quantized.engine = "fbgemm"
    model = getattr(quantization, arch)(weights=None, quantize=False)
    model.load_state_dict(torch.load(float_path, weights_only=True))
    model.eval()
    model.fuse_model()
    model.qconfig = torch.ao.quantization.QConfig(activation=torch.ao.quantization.default_observer,
                                                  weight=torch.ao.quantization.default_per_channel_weight_observer)
    torch.ao.quantization.prepare(model, inplace=True)
    tf = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    with torch.no_grad():
        model(torch.stack([tf(Image.open(p).convert("RGB")) for p in PHOTOS]))
    torch.ao.quantization.convert(model, inplace=True)
    torch.save(model.state_dict(), path)
    return path


def augment(img, rng):
    """A random crop (60-95 % of each side), a mirror half the time, colour and brightness moved, rescaled: a
    new photo of the same subject, for training and held-out sets made from the sample photos."""
    from PIL import ImageEnhance, ImageOps

    w, h = img.size
    s = rng.uniform(0.6, 0.95)
    cw, ch = int(w * s), int(h * s)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = img.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    out = ImageEnhance.Color(out).enhance(rng.uniform(0.6, 1.4))
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.8, 1.2))
    scale = rng.uniform(0.5, 1.2)
    return out.resize((max(32, int(out.width * scale)), max(32, int(out.height * scale))))
