"""torchvision's int8 weights: listed, fetched hash-checked, named as torchvision names them, and run to
torchvision's quantized models' outputs exactly (`torchvision.models.quantization.*(quantize=True)` on the fbgemm
engine), on seeded stand-ins made in torchvision's quantized layout (checkpoints.make_quantized_checkpoint)."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import shutil
from importlib import resources

import pytest
import torch
from checkpoints import PHOTOS
from PIL import Image
from torchvision.models import quantization

from resnet_cli.core.errors import UsageError
from resnet_cli.models import quantized, registry, resolve, state_dicts
from resnet_cli.models import weights as weights_module
from resnet_cli.models.weights import cached_file

QUANTIZED_ENUMS = {
    "resnet18": quantization.ResNet18_QuantizedWeights,
    "resnet50": quantization.ResNet50_QuantizedWeights,
    "resnext101_32x8d": quantization.ResNeXt101_32X8D_QuantizedWeights,
    "resnext101_64x4d": quantization.ResNeXt101_64X4D_QuantizedWeights,
}


@pytest.fixture
def patch_weights(monkeypatch):
    """patch(arch, name, **fields): the registry with those fields of `arch`'s int8 weights `name` changed."""
    data = json.loads(resources.files("resnet_cli").joinpath("data", "registry.json").read_text())

    def patch(arch: str, name: str, **fields) -> None:
        d = copy.deepcopy(data)
        d["architectures"][arch]["quantized"]["weights"][name].update(fields)
        monkeypatch.setattr(registry, "_data", lambda: d)
        registry.architectures.cache_clear()

    yield patch
    registry.architectures.cache_clear()


@pytest.fixture
def install(patch_weights):
    """install(ckpt, spec): a stand-in where torchvision would have downloaded `spec` (the tests' own
    TORCH_HOME), the registry's hash prefix made the stand-in's: a file named with an underscore before its
    hash (resnet18_fbgemm_16fa66dd.pth) is checked each time it is used."""

    def put(ckpt, spec: registry.WeightsSpec) -> None:
        cached_file(spec).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ckpt, cached_file(spec))
        sha = hashlib.sha256(cached_file(spec).read_bytes()).hexdigest()[:8]
        patch_weights(spec.arch, spec.name, sha256_prefix=sha)

    return put


@contextlib.contextmanager
def quantized_engine(name: str):
    """torch.backends.quantized.engine set to `name` for the block, restored after (the test's own: one that
    relied on quantized.engine would break with it)."""
    backends = torch.backends.quantized
    before, backends.engine = backends.engine, name
    try:
        yield
    finally:
        backends.engine = before


# Not fbgemm: the engine our code finds set when it runs, so that it reproduces torchvision only by choosing
# fbgemm itself (x86 moves probabilities by up to 0.067 with the same weights).
OTHER_ENGINE = "x86"


def torchvision_int8(arch: str, ckpt):
    """torchvision's quantized model; build it and run it inside quantized_engine("fbgemm")."""
    model = getattr(quantization, arch)(weights=None, quantize=True)
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    return model.eval()


def reference(arch: str, ckpt, weights) -> dict[str, tuple[list[int], list[float]]]:
    """torchvision's quantized model with the weights' own transforms, one photo at a time: top-5 of the
    softmax, equal probabilities in class-index order (torch.topk leaves their order unspecified)."""
    tf = weights.transforms()
    out = {}
    with quantized_engine("fbgemm"), torch.inference_mode():
        model = torchvision_int8(arch, ckpt)
        for p in PHOTOS:
            probs = model(tf(Image.open(p).convert("RGB")).unsqueeze(0)).softmax(dim=1)[0]
            ranked = sorted(range(len(probs)), key=lambda i: (-probs[i].item(), i))[:5]
            out[p.name] = (ranked, [probs[i].item() for i in ranked])
    return out


def test_the_registry_has_torchvisions_int8_weights_field_by_field():
    for arch, enum in QUANTIZED_ENUMS.items():
        spec = registry.get_arch(arch)
        assert (spec.quantized_enum, spec.quantized_default) == (enum.__name__, enum.DEFAULT.name)
        assert list(spec.quantized) == [w.name for w in enum]
        for w in enum:
            ours, t = spec.quantized[w.name], w.transforms()
            assert ours.full_name == f"{enum.__name__}.{w.name}" and ours.quantized
            assert ours.url == w.url and ours.file_name == w.url.rsplit("/", 1)[1]
            assert ours.sha256_prefix in ours.file_name and len(ours.sha256_prefix) == 8
            assert (ours.preprocess.resize, ours.preprocess.crop) == (t.resize_size[0], t.crop_size[0])
            assert (list(ours.preprocess.mean), list(ours.preprocess.std)) == (t.mean, t.std)
            assert (ours.acc1, ours.acc5) == (w.meta["_metrics"]["ImageNet-1K"]["acc@1"],
                                              w.meta["_metrics"]["ImageNet-1K"]["acc@5"])
            assert (ours.num_params, ours.gflops, ours.file_size_mb) == (w.meta["num_params"], w.meta["_ops"],
                                                                          w.meta["_file_size"])
            assert (ours.backend, ours.unquantized) == (w.meta["backend"], w.meta["unquantized"].name)
    assert [a for a in registry.architectures() if registry.get_arch(a).quantized] == list(QUANTIZED_ENUMS)


@pytest.mark.parametrize("arch, name, expected", [
    ("resnet50", "DEFAULT", "ResNet50_Weights.IMAGENET1K_V2"),  # DEFAULT stays the float default
    ("resnet50", "IMAGENET1K_FBGEMM_V1", "ResNet50_QuantizedWeights.IMAGENET1K_FBGEMM_V1"),
    ("resnet50", "imagenet1k_fbgemm_v2", "ResNet50_QuantizedWeights.IMAGENET1K_FBGEMM_V2"),
    (None, "ResNet50_QuantizedWeights.DEFAULT", "ResNet50_QuantizedWeights.IMAGENET1K_FBGEMM_V2"),
    (None, "ResNet18_QuantizedWeights.IMAGENET1K_FBGEMM_V1", "ResNet18_QuantizedWeights.IMAGENET1K_FBGEMM_V1"),
    ("resnext101_32x8d", "ResNeXt101_32X8D_QuantizedWeights.DEFAULT",
     "ResNeXt101_32X8D_QuantizedWeights.IMAGENET1K_FBGEMM_V2"),
])
def test_int8_names_resolve_as_torchvision_names_them(arch, name, expected):
    resolved = resolve.resolve(arch, name)
    assert resolved.name == expected
    if "Quantized" in expected:
        enum = expected.split(".")[0]
        tv = getattr(quantization, enum)[name.split(".")[-1].upper()]
        assert (resolved.spec.name, resolved.preprocess.resize) == (tv.name, tv.transforms().resize_size[0])


@pytest.mark.parametrize("arch, name, message", [
    ("resnet50", "ResNet50_Weights.IMAGENET1K_FBGEMM_V1", "published: DEFAULT"),
    ("resnet50", "ResNet50_QuantizedWeights.IMAGENET1K_V2", "IMAGENET1K_FBGEMM_V1, IMAGENET1K_FBGEMM_V2"),
    ("resnet34", "IMAGENET1K_FBGEMM_V1", "IMAGENET1K_V1"),
    ("resnet50", "ResNet18_QuantizedWeights.DEFAULT", "use --arch resnet18"),
])
def test_int8_names_that_do_not_fit_are_refused_with_what_there_is(arch, name, message):
    with pytest.raises(UsageError, match=message):
        resolve.resolve(arch, name)


@pytest.mark.parametrize("arch, weights", [
    ("resnet18", "ResNet18_QuantizedWeights.IMAGENET1K_FBGEMM_V1"),
    ("resnet50", "IMAGENET1K_FBGEMM_V2"),  # the short name; resnet50 is the default architecture
])
def test_int8_weights_give_torchvisions_quantized_outputs_exactly(arch, weights, quantized_checkpoint, cli, install):
    ckpt = quantized_checkpoint(arch)
    resolved = resolve.resolve(None, weights)
    install(ckpt, resolved.spec)
    ref = reference(arch, ckpt, QUANTIZED_ENUMS[arch][resolved.spec.name])
    with quantized_engine(OTHER_ENGINE):
        res = cli(*PHOTOS, "--weights", weights, "--offline", "-f", "jsonl", "--batch-size", "4")
    assert res.code == 0, res.stderr
    records = res.jsonl()
    assert [r["path"].rsplit("/", 1)[-1] for r in records] == [p.name for p in PHOTOS]
    for r in records:
        indices, probs = ref[r["path"].rsplit("/", 1)[-1]]
        assert (r["arch"], r["weights"]) == (arch, resolved.name)
        assert [t["index"] for t in r["topk"]] == indices, r["path"]
        assert [t["probability"] for t in r["topk"]] == probs, r["path"]  # to the bit
    ties = sum(len({t["probability"] for t in r["topk"]}) < 5 for r in records)
    assert ties  # the stand-ins have exact ties in their top-5, as int8 networks do: their order is tested


def test_int8_features_are_torchvisions_dequantized_pooled_features(quantized_checkpoint):
    ckpt = quantized_checkpoint("resnet18")
    x = torch.randn(3, 3, 224, 224)
    with quantized_engine("fbgemm"), torch.inference_mode():
        tv = torchvision_int8("resnet18", ckpt)
        h = tv.quant(x)
        h = tv.maxpool(tv.relu(tv.bn1(tv.conv1(h))))
        h = tv.layer4(tv.layer3(tv.layer2(tv.layer1(h))))
        want, logits = tv.dequant(torch.flatten(tv.avgpool(h), 1)), tv(x)
    with quantized_engine(OTHER_ENGINE), torch.inference_mode():
        ours = quantized.build(registry.get_arch("resnet18"),
                               state_dicts.read_state_dict(ckpt, quantized=True), str(ckpt))
        assert torch.equal(ours.features(x), want)
        assert torch.equal(ours(x), logits)


def test_int8_weights_run_on_the_cpu_in_fp32_only_and_export_as_their_float_weights(quantized_checkpoint, cli,
                                                                                       tmp_path, install):
    spec = registry.get_arch("resnet18").quantized["IMAGENET1K_FBGEMM_V1"]
    install(quantized_checkpoint("resnet18"), spec)
    res = cli(PHOTOS[0], "-w", spec.full_name, "--precision", "bf16", "--offline")
    assert res.code == 2 and "int8 weights" in res.stderr and "leave out --precision" in res.stderr
    res = cli(PHOTOS[0], "-w", spec.full_name, "--offline", "--device", "cuda")
    assert res.code == 2, res.stderr
    res = cli("explain", PHOTOS[0], "-w", spec.full_name, "--offline")
    assert res.code == 2 and "ResNet18_Weights.IMAGENET1K_V1" in res.stderr
    res = cli("export", "-w", spec.full_name, "-o", tmp_path / "m.onnx", "--offline")
    assert res.code == 2 and "-w ResNet18_Weights.IMAGENET1K_V1 --int8" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_float_checkpoint_in_the_int8_weights_place_is_refused(checkpoint, cli, install):
    spec = registry.get_arch("resnet18").quantized["IMAGENET1K_FBGEMM_V1"]
    install(checkpoint("resnet18"), spec)
    res = cli(PHOTOS[0], "-w", spec.full_name, "--offline")
    assert res.code == 2 and "not an int8 network's state dict" in res.stderr


def test_models_lists_the_int8_weights_and_what_is_cached(quantized_checkpoint, cli, install):
    install(quantized_checkpoint("resnet18"), registry.get_arch("resnet18").quantized["IMAGENET1K_FBGEMM_V1"])
    data = {m["arch"]: m for m in json.loads(cli("models", "--format", "json").stdout)}
    r18 = data["resnet18"]["int8"]
    assert (r18["enum"], r18["default"]) == ("ResNet18_QuantizedWeights", "IMAGENET1K_FBGEMM_V1")
    assert r18["weights"][0]["backend"] == "fbgemm" and r18["weights"][0]["unquantized"] == "IMAGENET1K_V1"
    assert r18["weights"][0]["cached"] is True and data["resnet34"]["int8"] is None
    assert [w["name"] for w in data["resnet50"]["int8"]["weights"]] == ["IMAGENET1K_FBGEMM_V1",
                                                                      "IMAGENET1K_FBGEMM_V2"]
    assert "IMAGENET1K_FBGEMM_V2 int8" in cli("models", "--format", "table").text


@pytest.fixture
def int8_server(weights_server, patch_weights):
    """serve(body, sha): resnet18's int8 weights served from this machine, under a file name shaped as the
    published one (resnet18_fbgemm_<8 hex>.pth: an underscore before the hash)."""
    base, served = weights_server

    def serve(body: bytes, sha: str) -> None:
        name = f"/models/quantized/resnet18_fbgemm_{sha}.pth"
        served[name] = body
        patch_weights("resnet18", "IMAGENET1K_FBGEMM_V1", url=f"{base}{name}", sha256_prefix=sha)

    return serve


@pytest.mark.timeout(60)
def test_download_fetches_int8_weights_hash_checked(int8_server, quantized_checkpoint, cli):
    body = quantized_checkpoint("resnet18").read_bytes()
    int8_server(body, "00000000")
    res = cli("download", "resnet18", "--weights", "IMAGENET1K_FBGEMM_V1", "-q")
    assert res.code == 3 and "hash mismatch" in res.stderr
    spec = registry.get_arch("resnet18").quantized["IMAGENET1K_FBGEMM_V1"]
    assert not cached_file(spec).exists()
    int8_server(body, hashlib.sha256(body).hexdigest()[:8])
    res = cli("download", "resnet18", "--weights", "IMAGENET1K_FBGEMM_V1", "-q")
    assert res.code == 0, res.stderr
    spec = registry.get_arch("resnet18").quantized["IMAGENET1K_FBGEMM_V1"]
    assert cached_file(spec).read_bytes() == body and "ResNet18_QuantizedWeights.IMAGENET1K_FBGEMM_V1" in res.text


def test_an_int8_file_torchvision_cached_unchecked_is_checked_before_use(quantized_checkpoint, cli):
    """torch.hub checks only names with the hash after a hyphen; the three named with an underscore land in the
    shared cache unchecked when torchvision downloads them. This tool checks them when it uses them."""
    import torch

    names = {"resnet18": "IMAGENET1K_FBGEMM_V1", "resnet50": "IMAGENET1K_FBGEMM_V1",
             "resnext101_32x8d": "IMAGENET1K_FBGEMM_V1"}
    for arch, name in names.items():
        spec = registry.get_arch(arch).quantized[name]
        assert torch.hub.HASH_REGEX.search(spec.file_name) is None  # torch.hub would check nothing
        assert spec.file_name.endswith(f"_fbgemm_{spec.sha256_prefix}.pth")
    assert weights_module.HUB_HASH.pattern == torch.hub.HASH_REGEX.pattern
    spec = registry.get_arch("resnet18").quantized["IMAGENET1K_FBGEMM_V1"]
    cached_file(spec).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(quantized_checkpoint("resnet18"), cached_file(spec))  # not the published file: another hash
    res = cli(PHOTOS[0], "-w", spec.full_name, "--offline")
    assert res.code == 3 and res.stdout == b""
    assert f"hash mismatch in the cached file {cached_file(spec)}: expected a sha256 beginning 16fa66dd" in res.stderr
    assert "delete it to download it again" in res.stderr
