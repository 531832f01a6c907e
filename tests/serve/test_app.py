"""`serve` through real HTTP on 127.0.0.1: every answer is the command line's record, byte for byte, for the
sample photos and a corpus of bad files, alone, several in one upload, and under 16 concurrent clients."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from checkpoints import PHOTOS
from corpus import OK, make_corpus

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The sample photos and the corpus of bad and odd files (regular files: an upload has bytes), in one
    folder: {name: expected error type, or OK}."""
    folder = tmp_path_factory.mktemp("uploads")
    expected = make_corpus(folder)
    (folder / "dangling_link.jpg").unlink()
    del expected["dangling_link.jpg"]
    for p in PHOTOS:
        shutil.copy(p, folder / p.name)
        expected[p.name] = OK
    return folder, dict(sorted(expected.items()))


@pytest.fixture(scope="module")
def classify_lines(files, checkpoint, cli) -> dict[str, bytes]:
    """{name: the line `classify --format jsonl` writes for that file}, the command run in the folder."""
    folder, expected = files
    result = cli("classify", *expected, "-a", "resnet18", "-w", checkpoint("resnet18"), "-f", "jsonl", cwd=folder)
    assert result.code == 1, result.stderr  # the bad files
    lines = result.stdout.splitlines(keepends=True)
    assert len(lines) == len(expected)
    return dict(zip(expected, lines))


def post_one(url: str, data: bytes, name: str | None = None, *, path: str = "/v1/classify",
             content_type: str = "application/octet-stream", client=httpx) -> httpx.Response:
    headers = {"Content-Type": content_type, **({"X-Filename": name} if name else {})}
    return client.post(url + path, content=data, headers=headers, timeout=60)


def test_each_answer_is_classify_s_line_byte_for_byte(server, files, classify_lines):
    folder, expected = files
    failures = 0
    for name, want in expected.items():
        r = post_one(server.url, (folder / name).read_bytes(), name,
                     content_type="image/png" if name.endswith(".png") else "application/octet-stream")
        assert r.content == classify_lines[name], name
        assert r.status_code == (200 if want == OK else 422), name
        assert r.headers["content-type"] == "application/json"
        if want != OK:
            failures += 1
            assert json.loads(r.content)["error"]["type"] == want
    assert failures >= 10  # the corpus's bad files were all there


def test_an_image_without_a_name_is_dash(server):
    r = post_one(server.url, PHOTOS[0].read_bytes())
    assert r.status_code == 200 and json.loads(r.content)["path"] == "-"


def test_a_multipart_upload_is_classify_s_json_document(server, files, checkpoint, cli):
    folder, expected = files
    names = list(expected)[::-1]  # upload order, not name order
    result = cli("classify", *names, "-a", "resnet18", "-w", checkpoint("resnet18"), "-f", "json", cwd=folder)
    assert result.code == 1, result.stderr
    parts = [("file", (n, (folder / n).read_bytes(), "application/octet-stream")) for n in names]
    r = httpx.post(server.url + "/v1/classify", files=parts, timeout=60)
    assert r.status_code == 422  # some images failed, as classify exits 1; every record is there
    assert r.content == result.stdout


def test_topk_per_request(server, checkpoint, cli):
    result = cli("classify", PHOTOS[1].name, "-a", "resnet18", "-w", checkpoint("resnet18"), "-k", "3", "-f",
                 "jsonl", cwd=PHOTOS[1].parent)
    assert result.code == 0, result.stderr
    r = httpx.post(server.url + "/v1/classify?topk=3", content=PHOTOS[1].read_bytes(),
                   headers={"Content-Type": "image/png", "X-Filename": PHOTOS[1].name})
    assert r.status_code == 200 and r.content == result.stdout
    for bad in ("0", "abc", "1001"):
        r = httpx.post(server.url + f"/v1/classify?topk={bad}", content=PHOTOS[1].read_bytes(),
                       headers={"Content-Type": "image/png"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "bad_request", bad


@pytest.mark.load
def test_16_concurrent_clients_each_get_their_own_image_s_answer(server, files, classify_lines):
    """Each client sends a different file, three times over, while the others do: batching mixes them in
    the model's batches, and every answer must be the client's own, to the byte."""
    folder, expected = files
    names = list(expected)[:16]
    assert len(names) == 16

    def client(name: str) -> list[bool]:
        data = (folder / name).read_bytes()
        with httpx.Client(timeout=120) as c:
            return [post_one(server.url, data, name, client=c).content == classify_lines[name] for _ in range(3)]

    with ThreadPoolExecutor(16) as pool:
        results = dict(zip(names, pool.map(client, names)))
    assert all(all(ok) for ok in results.values()), [n for n, ok in results.items() if not all(ok)]
    metrics = httpx.get(server.url + "/metrics").text
    # the model did batch requests together: some forward pass held more than one image
    counts = {line.split('le="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
              for line in metrics.splitlines() if line.startswith("resnet_classify_batch_size_bucket")}
    assert counts["1.0"] < counts["+Inf"]


def test_embed_answers_are_embed_s_lines(server, files, checkpoint, cli, tmp_path):
    folder, _ = files
    names = [PHOTOS[0].name, "notes.jpg", PHOTOS[2].name]
    out = tmp_path / "e.jsonl"
    result = cli("embed", *names, "-a", "resnet18", "-w", checkpoint("resnet18"), "-o", out, cwd=folder)
    assert result.code == 1, result.stderr
    lines = out.read_bytes().splitlines(keepends=True)
    for name, line in zip(names, lines):
        r = post_one(server.url, (folder / name).read_bytes(), name, path="/v1/embed")
        assert r.content == line and r.status_code == (422 if name == "notes.jpg" else 200)
    parts = [("file", (n, (folder / n).read_bytes())) for n in names]
    r = httpx.post(server.url + "/v1/embed?normalize=true", files=parts, timeout=60)
    vectors = [rec.get("embedding") for rec in r.json()]
    assert vectors[1] is None and abs(sum(v * v for v in vectors[0]) - 1) < 1e-5


def test_torchserve_inference_api(server, classify_lines):
    record = json.loads(classify_lines[PHOTOS[3].name])
    r = httpx.post(server.url + "/predictions/resnet18", content=PHOTOS[3].read_bytes())
    assert r.status_code == 200
    assert list(r.json().items()) == [(p["label"], p["probability"]) for p in record["topk"]]
    r = httpx.put(server.url + "/predictions/resnet18", content=PHOTOS[3].read_bytes())  # curl -T
    assert list(r.json().items()) == [(p["label"], p["probability"]) for p in record["topk"]]
    r = httpx.post(server.url + "/predictions/resnet18", files={"data": ("x.jpg", PHOTOS[3].read_bytes())})
    assert list(r.json().items()) == [(p["label"], p["probability"]) for p in record["topk"]]
    two = [("data", ("x.jpg", PHOTOS[3].read_bytes())), ("data", ("y.jpg", PHOTOS[2].read_bytes()))]
    r = httpx.post(server.url + "/predictions/resnet18", files=two)  # TorchServe's answer holds one image
    assert r.status_code == 400 and r.json()["error"]["type"] == "bad_request"
    r = httpx.post(server.url + "/predictions/resnet18", content=b"not a picture\n")
    assert r.status_code == 422 and r.json()["error"]["type"] == "not_an_image"
    r = httpx.post(server.url + "/predictions/densenet", content=PHOTOS[3].read_bytes())
    assert r.status_code == 404 and r.json()["error"]["type"] == "model_not_found"
    assert httpx.get(server.url + "/ping").json() == {"status": "Healthy"}


@pytest.mark.parametrize("headers, body, status, kind", [
    ({"Content-Type": "application/json"}, b'{"image": "..."}', 415, "unsupported_media_type"),
    ({}, b"", 415, "unsupported_media_type"),
    ({"Content-Type": "multipart/form-data; boundary=xyz"}, b"--xyz\r\nnonsense", 400, "bad_request"),
    ({"Content-Type": "multipart/form-data"}, b"--xyz\r\n\r\n--xyz--\r\n", 400, "bad_request"),
    ({"Content-Type": "multipart/form-data; boundary=xyz"},
     b'--xyz\r\nContent-Disposition: form-data; name="other"\r\n\r\nhello\r\n--xyz--\r\n', 400, "bad_request"),
    ({"Content-Type": "image/jpeg"}, b"", 422, "empty_file"),
])
def test_bad_requests_get_a_json_4xx(server, headers, body, status, kind):
    r = httpx.post(server.url + "/v1/classify", content=body, headers=headers)
    assert r.status_code == status
    assert r.json()["error"]["type"] == kind


def test_health_readiness_openapi_and_metrics(server):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    for probe in ("/healthz", "/readyz", "/ping"):  # load balancers' probes may send HEAD
        assert httpx.head(server.url + probe).status_code == 200, probe
    r = httpx.get(server.url + "/v1/classify")
    assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"
    ready = httpx.get(server.url + "/readyz").json()
    assert ready["status"] == "ready" and ready["arch"] == "resnet18"
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert {"/v1/classify", "/v1/embed", "/predictions/{model_name}", "/ping", "/healthz", "/readyz",
            "/metrics"} <= set(paths)
    assert httpx.get(server.url + "/nowhere").json()["error"]["type"] == "not_found"
    text = httpx.get(server.url + "/metrics").text
    for name in ('resnet_classify_requests_total{endpoint="/v1/classify",status="200"}',
                 'resnet_classify_failures_total{type="not_an_image"}',
                 'resnet_classify_failures_total{type="unsupported_media_type"}',
                 "resnet_classify_request_duration_seconds_bucket", "resnet_classify_batch_size_bucket",
                 "resnet_classify_queue_depth"):
        assert name in text, name
