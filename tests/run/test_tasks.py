"""Tasks (tasks.py) against engines: every (engine, task) pair either runs the task and gives the local engine's
records, or is refused with a usage error before anything heavy starts; and a run resolves its weights once."""

from __future__ import annotations

import io
import json
import shutil

import pytest

from checkpoints import PHOTOS
from resnet_cli.run import tasks
from resnet_cli.core.errors import UsageError
from resnet_cli.run.job import Engine, InputOptions, ModelOptions, RunOptions, make_job

# One instance of every task the package defines; a new Task subclass without an entry here fails
# test_every_task_is_in_the_matrix.
TASKS = {
    "classify": tasks.Classify(topk=3),
    "embed": tasks.Embed(),
    "explain": tasks.Explain("gradcam", "layer4.1", 7, None, 3),
}


def test_every_task_is_in_the_matrix():
    defined = {cls.name for cls in vars(tasks).values()
               if isinstance(cls, type) and issubclass(cls, tasks.Task) and cls is not tasks.Task}
    assert defined == set(TASKS)


def _records(job) -> list[dict]:
    from resnet_cli.cli.commands.stream import write_records as run
    from resnet_cli.outputs.writers import Format

    if job.task.name == "embed":
        from resnet_cli.run import engines
        from resnet_cli.core.signals import StopSignals

        return [r.to_dict() for r in engines.records(job, StopSignals().event)]
    out = io.BytesIO()
    run(job, Format.jsonl, None, stdout=out, stderr=io.StringIO())
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    for p in PHOTOS[:3]:
        shutil.copy(p, d / p.name)
    (d / "notes.jpg").write_text("not a picture\n")
    return d


def _job(folder, ckpt, task, engine: Engine):
    model = ModelOptions("resnet18", str(ckpt)).resolve()
    return make_job([str(folder)], model, task, RunOptions(engine=engine, workers=2), listing=InputOptions())


@pytest.mark.ray
@pytest.mark.timeout(400, method="thread")  # a hung Ray call ignores SIGALRM
def test_every_engine_runs_each_task_it_names_with_the_local_records_and_refuses_the_others(folder, checkpoint):
    import ray

    ckpt = checkpoint("resnet18")
    local = {name: _records(_job(folder, ckpt, task, Engine.local)) for name, task in TASKS.items()}
    assert [r.get("error", {}).get("type") for r in local["classify"]] == [None, None, None, "not_an_image"]
    assert "explanation" in local["explain"][0] and "embedding" in local["embed"][0]
    ray.init(address="local", num_cpus=2, log_to_driver=False, include_dashboard=False)
    try:
        for engine in Engine:
            for name, task in TASKS.items():
                if engine.value in task.engines:
                    assert _records(_job(folder, ckpt, task, engine)) == local[name], (engine, name)
                else:
                    with pytest.raises(UsageError, match=f"{name} cannot run on --engine {engine.value}"):
                        _job(folder, ckpt, task, engine)
    finally:
        ray.shutdown()


def test_an_engine_that_cannot_return_pictures_refuses_a_report_before_anything_runs(folder, checkpoint, cli):
    res = cli(str(folder), "-a", "resnet18", "-w", checkpoint("resnet18"), "--engine", "ray", "--report",
              str(folder / "page.html"))
    assert res.code == 2
    assert "--engine ray does not return the pictures" in res.stderr
    assert not (folder / "page.html").exists()


@pytest.mark.parametrize("argv", [
    ["classify", "{photo}", "-k", "2"],
    ["explain", "{photo}", "--out", "{tmp}/ex", "--target", "tench"],
    ["embed", "{photo}", "-o", "{tmp}/v.jsonl"],
])
def test_a_run_resolves_its_weights_once(argv, checkpoint, cli, monkeypatch, tmp_path):
    from resnet_cli.models import resolve

    calls = []
    real = resolve.resolve

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(resolve, "resolve", counting)
    photo = str(PHOTOS[0])
    args = [a.format(photo=photo, tmp=tmp_path) for a in argv]
    res = cli(*args, "-a", "resnet18", "-w", checkpoint("resnet18"))
    assert res.code == 0, res.stderr
    assert len(calls) == 1


def test_evaluate_resolves_each_model_once(checkpoint, cli, monkeypatch, tmp_path):
    from resnet_cli.models import resolve

    for cls in ("tench", "goldfish"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        shutil.copy(PHOTOS[0], tmp_path / "data" / cls / "a.png")
    calls = []
    real = resolve.resolve
    monkeypatch.setattr(resolve, "resolve", lambda *a, **k: calls.append(a) or real(*a, **k))
    ckpt = str(checkpoint("resnet18"))
    res = cli("evaluate", str(tmp_path / "data"), "-a", "resnet18,resnet18", "-w", f"{ckpt},{ckpt}", "-f", "json")
    assert res.code == 0, res.stderr
    assert len(calls) == 2


def test_topk_beyond_the_model_is_refused_before_any_input_is_read(cli, tmp_path):
    with pytest.raises(UsageError, match="more than the model's 1000 classes"):
        make_job([str(tmp_path / "nothere.jpg")], ModelOptions("resnet18").resolve(), tasks.Classify(topk=1001),
                 RunOptions(offline=True))
