"""Property test: whatever a .safetensors header says (random JSON, a length field that lies, unknown dtypes,
shapes that overflow or disagree with the data, offsets past the end, this tool's metadata malformed in any
field), reading it as weights gives a usable answer or a one-line UsageError that names the file, never
another exception, and never much memory: the header is judged against the file before anything is built.

Each example goes through what a run does with `-w FILE`: `resolve` (the model's metadata, the architecture its
shapes identify), `class_names` (the head's class count, the labels) and `read_state_dict` (the tensors).
"""

from __future__ import annotations

import json
import struct
import tracemalloc

import safetensors.torch  # noqa: F401 - imported before memory is traced: an import is not the header's doing
import torch  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resnet_cli.core.errors import UsageError
from resnet_cli.models.resolve import METADATA_KEY, resolve
from resnet_cli.models.state_dicts import read_state_dict
from resnet_cli.models.weights import class_names

MAX_PEAK_BYTES = 64 << 20  # Python allocations while one example is read: a huge claim would show here
class_names(resolve("resnet18", "DEFAULT"))  # the registry and ImageNet's names, read once before tracing

DTYPES = ["F32", "F16", "BF16", "F64", "U8", "I8", "I16", "I32", "I64", "BOOL", "F8_E4M3", "C64", "X9", "", 7]
SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "U8": 1, "I8": 1, "I16": 2, "I32": 4, "I64": 8, "BOOL": 1}
KEYS = ["fc.weight", "fc.bias", "conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight",
        "layer1.0.conv3.weight", "layer4.1.bn1.weight", "module.fc.weight", "layerX.y", "layer1.", ""]

big_ints = st.one_of(st.integers(0, 8), st.integers(0, 2**16), st.sampled_from([2**31, 2**32, 4 * 10**9, 2**63,
                                                                                 2**64 - 1, 2**64, -1]))
json_leaf = st.one_of(st.none(), st.booleans(), big_ints, st.floats(allow_nan=False), st.text(max_size=8))
json_any = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                        max_leaves=12)


@st.composite
def tensor_entry(draw, offset: int):
    """One tensor's header entry; honest (shape, dtype and offsets agree) or not, as drawn."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.one_of(st.lists(st.integers(0, 6), max_size=3), st.lists(big_ints, max_size=4)))
    size = SIZES.get(dtype, 1) if isinstance(dtype, str) else 1
    numel = 1
    for n in shape:
        numel *= n if isinstance(n, int) else 1
    honest = [offset, offset + numel * size]
    offsets = draw(st.one_of(st.just(honest), st.lists(big_ints, min_size=0, max_size=3),
                             st.tuples(st.just(offset), big_ints).map(list)))
    entry = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
    if draw(st.booleans()):
        entry = draw(st.one_of(st.just(entry), json_any))  # sometimes not an entry at all
    return entry, (offsets[1] if offsets == honest and offset <= honest[1] < 4096 else offset)


def model_metadata():
    """This tool's metadata, well-formed or broken in any field."""
    pre = st.fixed_dictionaries({
        "resize": st.one_of(st.integers(-2, 5000), big_ints, json_leaf),
        "crop": st.one_of(st.integers(-2, 5000), big_ints, json_leaf),
        "mean": st.one_of(st.lists(st.floats(-1, 1), min_size=3, max_size=3), json_any),
        "std": st.one_of(st.lists(st.floats(0, 1), min_size=3, max_size=3), json_any),
        "interpolation": st.one_of(st.sampled_from(["bilinear", "bicubic", "nearest", "lanczos", "spline"]),
                                   json_leaf),
    })
    meta = st.fixed_dictionaries({
        "arch": st.one_of(st.sampled_from(["resnet18", "resnet50", "ResNet-18", "resnet9"]), json_leaf),
        "labels": st.one_of(st.lists(st.text(max_size=5), max_size=4), json_any),
        "preprocess": st.one_of(pre, json_any),
    })
    drop = st.sets(st.sampled_from(["arch", "labels", "preprocess"]), max_size=1)
    return st.tuples(meta, drop).map(lambda t: {k: v for k, v in t[0].items() if k not in t[1]})


@st.composite
def safetensors_file(draw) -> bytes:
    header: dict = {}
    offset = 0
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=5, unique=True)):
        header[key], offset = draw(tensor_entry(offset))
    if draw(st.booleans()):
        value = draw(st.one_of(model_metadata().map(json.dumps), json_any.map(json.dumps), st.text(max_size=10)))
        meta = draw(st.one_of(st.just({METADATA_KEY: value}), json_any))
        header["__metadata__"] = meta
    raw = draw(st.one_of(st.just(json.dumps(header)), st.just(json.dumps(draw(json_any))))).encode()
    raw = draw(st.one_of(st.just(raw), st.binary(max_size=40), st.just(raw + b"   "), st.just(raw[:-1])))
    length = draw(st.one_of(st.just(len(raw)), big_ints))
    data = draw(st.one_of(st.just(bytes(offset)), st.binary(max_size=64)))
    return struct.pack("<Q", length % 2**64) + raw + data


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])
@given(content=safetensors_file())
def test_any_safetensors_header_reads_or_is_a_one_line_usage_error_in_bounded_memory(content, tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(content)
    tracemalloc.start()
    try:
        try:
            resolved = resolve(None, str(path))
            classes = class_names(resolved)
            assert 1 <= len(classes) <= 1_000_000
            state = read_state_dict(path)
            assert isinstance(state, dict)
        except UsageError as exc:
            message = str(exc)
            assert "\n" not in message and str(path) in message, message
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MAX_PEAK_BYTES, peak
