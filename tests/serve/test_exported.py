"""`serve --weights model.onnx`: a server of an exported model answers with the records `classify` writes for the
same file and the same exported model, byte for byte (the server builds its network through the same factory as
the engines, runtimes.make_predictor)."""

from __future__ import annotations

import httpx
import pytest

from checkpoints import PHOTOS

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("suffix", [".onnx", ".xml"])
def test_a_server_of_an_exported_model_answers_as_classify_on_that_file(suffix, checkpoint, cli, tmp_path):
    from resnet_cli.run.job import ModelOptions
    from resnet_cli.serve.model import ModelSettings, load
    from servers import serve

    model_file = tmp_path / f"model{suffix}"
    res = cli("export", "-w", checkpoint("resnet18"), "-o", model_file, "--crop", "64", "--quiet")
    assert res.code == 0, res.stderr
    names = [p.name for p in PHOTOS]
    want = cli("classify", *names, "-w", model_file, "-f", "jsonl", cwd=PHOTOS[0].parent)
    assert want.code == 0, want.stderr
    lines = want.stdout.splitlines(keepends=True)
    assert len(lines) == len(names) and all(f'"weights": "{model_file}"'.encode() in line for line in lines)

    running = serve(load(ModelSettings(ModelOptions(None, str(model_file)))))
    try:
        for photo, line in zip(PHOTOS, lines):
            r = httpx.post(running.url + "/v1/classify", content=photo.read_bytes(), timeout=60,
                           headers={"Content-Type": "application/octet-stream", "X-Filename": photo.name})
            assert r.status_code == 200
            assert r.content == line, photo.name
    finally:
        running.stop()
