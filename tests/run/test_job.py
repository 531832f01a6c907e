"""job.make_job and its option groups, tasks' bind rules, and devices.py's rules: the cheap checks that run
before torch is imported, any weights are read or any input is listed."""

from __future__ import annotations

import sys

import pytest

from resnet_cli.models import devices
from resnet_cli.run import tasks
from resnet_cli.models.devices import Precision, check_device, default_batch_size, forward_batch
from resnet_cli.core.errors import UsageError, WeightsUnavailable
from resnet_cli.run.job import Engine, Job, ModelOptions, RunOptions, make_job
from resnet_cli.models.resolve import Resolved

PUBLISHED = ModelOptions("resnet18").resolve()  # 1000 classes, known without reading anything
EXPLAIN = tasks.Explain("gradcam", "layer4.1", 7)


@pytest.fixture(autouse=True)
def _no_download(monkeypatch):
    """No test here may fetch weights: a download is a failure."""
    from resnet_cli.inputs import net

    def refuse(*args, **kwargs):
        raise AssertionError("make_job tried to download")

    monkeypatch.setattr(net, "download", refuse)


def checkpoint_weights(path="model.pth") -> Resolved:
    """A checkpoint's resolution: its class count is unknown until the file is read (make_job never reads it)."""
    return Resolved(PUBLISHED.arch, None, path, PUBLISHED.preprocess)


def test_make_job_builds_a_job_of_the_task_and_normalised_options():
    job = make_job(["a.jpg"], PUBLISHED, tasks.Classify(), RunOptions(device="CPU", precision="bf16"))
    assert isinstance(job, Job)
    assert job.options.device == "cpu"
    assert job.options.precision is Precision.bf16 and job.options.engine is Engine.local
    assert job.task == tasks.Classify(topk=5)  # bound: the default top-k filled in
    assert job.weights is PUBLISHED


@pytest.mark.parametrize("spelled, normal", [("CPU", "cpu"), (" cuda:1 ", "cuda:1"), ("Auto", "auto"),
                                             ("MPS", "mps"), ("CUDA", "cuda")])
def test_a_device_is_normalised(spelled, normal):
    job = make_job([], PUBLISHED, tasks.Embed(), RunOptions(device=spelled))
    assert job.options.device == normal


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "cpu0", "", "cuda:-1", "tpu"])
def test_an_unknown_device_is_refused_naming_it(device):
    with pytest.raises(UsageError, match=f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps"):
        make_job([], PUBLISHED, tasks.Embed(), RunOptions(device=device))


def test_an_engine_that_cannot_run_the_task_is_refused_naming_both():
    with pytest.raises(UsageError) as e:
        make_job(["a.jpg"], PUBLISHED, EXPLAIN, RunOptions(engine="ray"))
    assert str(e.value) == "explain cannot run on --engine ray; it runs on --engine local"


@pytest.mark.parametrize("task", [tasks.Classify(), tasks.Embed(), EXPLAIN])
def test_every_task_runs_on_the_local_engine(task):
    assert make_job([], PUBLISHED, task, RunOptions(engine=Engine.local)).task.name == task.name


def test_a_view_size_on_the_ray_engine_is_refused():
    with pytest.raises(UsageError, match="--engine ray does not return the pictures"):
        make_job([], PUBLISHED, tasks.Classify(), RunOptions(engine="ray"), view_size=256)
    assert make_job([], PUBLISHED, tasks.Classify(), RunOptions(engine="local"), view_size=256).view_size == 256


def test_a_ray_address_without_the_ray_engine_is_refused():
    with pytest.raises(UsageError, match="^--ray-address needs --engine ray$"):
        make_job([], PUBLISHED, tasks.Classify(), RunOptions(ray_address="ray://head:10001"))


def test_the_ray_engine_without_ray_installed_says_how_to_get_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(UsageError, match=r"pip install 'resnet-classify\[ray\]'"):
        make_job([], PUBLISHED, tasks.Classify(), RunOptions(engine="ray"))


def test_stdin_dash_with_stdin_closed_is_refused(monkeypatch):
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(UsageError, match="stdin is closed"):
        make_job(["a.jpg", "-"], PUBLISHED, tasks.Classify())
    assert make_job(["a.jpg"], PUBLISHED, tasks.Classify()).task.topk == 5  # no "-": stdin does not matter


@pytest.mark.parametrize("task", [tasks.Classify(topk=1001), tasks.Explain("gradcam", "layer4.1", 7, topk=1001)])
def test_topk_beyond_the_classes_is_refused_before_anything_is_read(task, tmp_path):
    missing = tmp_path / "nothing-here"
    with pytest.raises(UsageError) as e:
        make_job([str(missing)], PUBLISHED, task, RunOptions(offline=True))
    assert str(e.value) == "--topk 1001 is more than the model's 1000 classes"
    assert not isinstance(e.value, WeightsUnavailable)  # refused before the weights were even looked for


def test_topk_at_the_class_count_passes_and_offline_then_stops_at_the_missing_weights():
    # the weights are not cached (an empty torch home): offline, that is the next thing refused
    with pytest.raises(WeightsUnavailable):
        make_job([], PUBLISHED, tasks.Classify(topk=1000), RunOptions(offline=True))


def test_topk_of_a_checkpoint_is_checked_once_its_head_is_read():
    # a checkpoint's class count is unknown before it is read: make_job leaves the task unbound
    job = make_job([], checkpoint_weights(), tasks.Classify(topk=1001))
    assert job.task.topk == 1001


def test_the_precision_rules_that_need_no_hardware_are_applied_by_make_job():
    with pytest.raises(UsageError, match="fp16 needs a GPU"):
        make_job([], PUBLISHED, tasks.Classify(), RunOptions(device="cpu", precision="fp16"))
    with pytest.raises(UsageError, match="bf16 is not supported on mps"):
        make_job([], PUBLISHED, tasks.Classify(), RunOptions(device="mps", precision="bf16"))
    assert make_job([], PUBLISHED, tasks.Classify(), RunOptions(device="cuda:0", precision="fp16")).options.device \
        == "cuda:0"


def test_model_options_resolve_carries_the_labels_file_and_the_overrides():
    resolved = ModelOptions("resnet18", "IMAGENET1K_V1", crop=160, labels="names.txt").resolve()
    assert resolved.labels_file == "names.txt"
    assert resolved.arch.name == "resnet18" and resolved.name == "ResNet18_Weights.IMAGENET1K_V1"
    assert (resolved.preprocess.resize, resolved.preprocess.crop) == (183, 160)  # the 256/224 framing kept
    assert ModelOptions("resnet18").resolve().labels_file is None


def test_sources_given_replace_the_listing_of_inputs():
    from resnet_cli.inputs.sources import Source

    given = [Source("x/a.jpg"), Source("x/b.jpg")]
    job = make_job(["ignored"], PUBLISHED, tasks.Classify(), sources=given)
    assert [s.path for s in job.inputs] == ["x/a.jpg", "x/b.jpg"]


# --- tasks: bind and topk_for ----------------------------------------------------------------------------------

def test_topk_for_defaults_to_five_or_every_class_of_a_smaller_model():
    assert tasks.topk_for(None, 1000) == 5
    assert tasks.topk_for(None, 5) == 5
    assert tasks.topk_for(None, 3) == 3
    assert tasks.topk_for(7, 1000) == 7
    assert tasks.topk_for(2, 3) == 2


def test_classify_bind_fills_in_the_default_topk():
    assert tasks.Classify().bind(1000).topk == 5
    assert tasks.Classify().bind(2).topk == 2
    assert tasks.Classify(topk=10).bind(10).topk == 10
    assert tasks.Classify(restrict=(3, 1, 2)).bind(10) == tasks.Classify(topk=5, restrict=(1, 2, 3))


def test_classify_sorts_its_restriction():
    assert tasks.Classify(restrict=(9, 2, 5)).restrict == (2, 5, 9)


@pytest.mark.parametrize("task, message", [
    (tasks.Classify(topk=11), "--topk 11 is more than the model's 10 classes"),
    (tasks.Classify(restrict=(2, 10)), "class 10 is not one of the model's 10 classes"),
    (tasks.Classify(topk=3, restrict=(1, 2)), "--topk 3 is more than the 2 classes predictions are restricted to"),
    (tasks.Explain("gradcam", "layer4.1", 7, target=10), "--target 10 is not one of the model's 10 classes"),
    (tasks.Explain("gradcam", "layer4.1", 7, topk=11), "--topk 11 is more than the model's 10 classes"),
])
def test_bind_refuses_what_the_model_cannot_answer(task, message):
    with pytest.raises(UsageError) as e:
        task.bind(10)
    assert str(e.value) == message


def test_explain_bind_keeps_its_target_and_fills_in_topk():
    bound = tasks.Explain("gradcam", "layer4.1", 7, target=9).bind(10)
    assert (bound.target, bound.topk, bound.method, bound.position) == (9, 5, "gradcam", 7)
    assert tasks.Explain("gradcam", "layer4.1", 7).bind(3).topk == 3


def test_embed_binds_to_itself_and_runs_everywhere():
    assert tasks.Embed().bind(1000) == tasks.Embed()
    assert tasks.Embed.engines == {"local", "ray"} and tasks.Explain.engines == {"local"}


# --- devices ---------------------------------------------------------------------------------------------------

def test_the_forward_shape_is_8_on_a_cpu_and_64_on_a_gpu():
    assert forward_batch("cpu") == 8
    assert forward_batch("cuda") == 64 and forward_batch("mps") == 64


def test_the_default_batch_size_is_the_forward_shape_unless_given():
    assert default_batch_size(None, "cpu") == 8
    assert default_batch_size(None, "cuda") == 64
    assert default_batch_size(16, "cpu") == 16 and default_batch_size(3, "cuda") == 3


@pytest.mark.parametrize("device, precision, ok", [
    ("cpu", "fp32", True), ("cpu", "bf16", True), ("cpu", "fp16", False),
    ("cuda", "fp16", True), ("cuda:3", "bf16", True), ("mps", "fp16", True), ("mps", "bf16", False),
    ("auto", "fp16", True),  # auto is checked again once it is a device (devices.check_precision)
])
def test_check_device_applies_the_precision_rules_that_need_no_hardware(device, precision, ok):
    if ok:
        assert check_device(device, Precision(precision)) == device
    else:
        with pytest.raises(UsageError, match=f"--precision {precision}"):
            check_device(device, Precision(precision))


def test_check_precision_applies_the_same_rules_to_a_resolved_device():
    import torch

    assert devices.check_precision("fp32", torch.device("cpu")) is torch.float32
    with pytest.raises(UsageError, match="fp16 needs a GPU"):
        devices.check_precision("fp16", torch.device("cpu"))
    assert devices.dtype_of("bf16") is torch.bfloat16 and devices.dtype_of(Precision.fp16) is torch.float16
    assert devices.resolve_device("cpu") == torch.device("cpu")
