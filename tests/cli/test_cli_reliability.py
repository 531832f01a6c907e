"""Every bad file gets its own record in its place; odd but valid files are classified; names survive."""

from __future__ import annotations

import csv
import http.server
import io
import json
import os
import threading
import time

import pytest

from checkpoints import PHOTOS
from corpus import OK, make_corpus
from resnet_cli.inputs import net



@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus") / "mixed"
    return folder, make_corpus(folder)


def assert_records_match(records, names_expected):
    assert [os.path.basename(r["path"]) for r in records] == list(names_expected)
    for r, (name, want) in zip(records, names_expected.items()):
        if want == OK:
            assert "topk" in r and len(r["topk"]) == 5, (name, r)
        else:
            assert r["error"]["type"] == want, (name, r)
            assert r["error"]["message"] and "\n" not in r["error"]["message"]
            assert set(r) == {"path", "error"}


@pytest.mark.timeout(120)
def test_corpus_every_file_gets_its_record_in_order(corpus, checkpoint, cli):
    folder, expected = corpus
    res = cli(folder, "--arch", "resnet18", "--weights", checkpoint("resnet18"), "--format", "jsonl")
    assert res.code == 1
    assert_records_match(res.jsonl(), expected)
    bad = [n for n, w in expected.items() if w != OK]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == len(bad)  # one line per bad file, nothing else
    for name, line in zip(bad, lines):
        assert name in line and expected[name] in line
    assert "Traceback" not in res.stderr


@pytest.mark.timeout(120)
def test_a_bad_file_never_shifts_its_neighbours_predictions(corpus, checkpoint, cli):
    """Classified alone or among broken files, in any batch size, each image gets the same answer."""
    folder, expected = corpus
    ckpt = checkpoint("resnet18")
    together = {os.path.basename(r["path"]): r for r in
                cli(folder, "-a", "resnet18", "-w", ckpt, "-f", "jsonl", "-b", "3").jsonl()}
    for name in ("cmyk.jpg", "photo.webp", "trailing_bytes.jpg"):
        alone = cli(folder / name, "-a", "resnet18", "-w", ckpt, "-f", "jsonl").jsonl()[0]
        assert [t["index"] for t in alone["topk"]] == [t["index"] for t in together[name]["topk"]]
        for a, b in zip(alone["topk"], together[name]["topk"]):
            assert abs(a["probability"] - b["probability"]) < 1e-5


def _top(cli, path, ckpt):
    rec = cli(path, "-a", "resnet18", "-w", ckpt, "-f", "jsonl", "-k", "5").jsonl()[0]
    return [t["index"] for t in rec["topk"]], [t["probability"] for t in rec["topk"]]


def test_exif_orientation_is_applied(tmp_path, checkpoint, cli):
    from PIL import Image

    from corpus import exif_rotated_jpeg

    ckpt = checkpoint("resnet18")
    (tmp_path / "rotated.jpg").write_bytes(exif_rotated_jpeg())
    upright = Image.open(tmp_path / "rotated.jpg").transpose(Image.Transpose.ROTATE_270)  # what a viewer shows
    upright.save(tmp_path / "upright.png")
    stored = Image.open(tmp_path / "rotated.jpg")
    stored.getexif().clear()
    stored.save(tmp_path / "as_stored.png")
    assert _top(cli, tmp_path / "rotated.jpg", ckpt)[0] == _top(cli, tmp_path / "upright.png", ckpt)[0]
    assert _top(cli, tmp_path / "rotated.jpg", ckpt) != _top(cli, tmp_path / "as_stored.png", ckpt)


def test_16_bit_greyscale_is_seen_as_its_8_bit_picture_not_clipped_white(corpus, checkpoint, cli):
    folder, _ = corpus
    ckpt = checkpoint("resnet18")
    assert _top(cli, folder / "grey16.png", ckpt) == _top(cli, folder / "grey_L.png", ckpt)


def test_animated_gif_and_multipage_tiff_use_their_first_frame(corpus, checkpoint, cli, tmp_path):
    from PIL import Image

    folder, _ = corpus
    ckpt = checkpoint("resnet18")
    for name in ("animated.gif", "multipage.tiff"):
        Image.open(folder / name).convert("RGB").save(tmp_path / f"{name}.first.png")
        assert _top(cli, folder / name, ckpt) == _top(cli, tmp_path / f"{name}.first.png", ckpt)


def test_explicit_missing_paths_svg_and_directories(tmp_path, checkpoint, cli):
    svg = tmp_path / "logo.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>')
    res = cli(tmp_path / "missing.jpg", svg, PHOTOS[0], "-a", "resnet18", "-w", checkpoint("resnet18"), "-f", "jsonl")
    recs = res.jsonl()
    assert [r.get("error", {}).get("type", OK) for r in recs] == ["not_found", "unsupported_format", OK]
    assert recs[0]["path"] == str(tmp_path / "missing.jpg")
    assert res.code == 1


@pytest.mark.timeout(60)
def test_symlink_loops_end_and_unreadable_folders_get_a_record(tmp_path, checkpoint, cli, monkeypatch):
    import shutil

    root = tmp_path / "tree"
    (root / "a" / "b").mkdir(parents=True)
    (root / "locked").mkdir()
    shutil.copy(PHOTOS[0], root / "a" / "b" / "x.jpg")
    shutil.copy(PHOTOS[1], root / "z.png")
    os.symlink(root, root / "a" / "b" / "loop")  # a link back to the top
    real_scandir = os.scandir

    def scandir(path):  # tests may run as root, which chmod 000 does not stop
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    res = cli(root, "-r", "-a", "resnet18", "-w", checkpoint("resnet18"), "-f", "jsonl")
    recs = res.jsonl()
    assert [os.path.relpath(r["path"], root) for r in recs] == ["a/b/x.jpg", "locked", "z.png"]
    assert recs[1]["error"]["type"] == "unreadable_folder"
    assert res.code == 1


@pytest.mark.timeout(60)
def test_a_fifo_named_like_an_image_is_refused_not_waited_on(tmp_path, checkpoint, cli):
    import shutil

    shutil.copy(PHOTOS[0], tmp_path / "a.png")
    os.mkfifo(tmp_path / "b.jpg")  # nothing will ever write to it
    res = cli(tmp_path, "-a", "resnet18", "-w", checkpoint("resnet18"), "-f", "jsonl")
    recs = res.jsonl()
    assert "topk" in recs[0] and recs[1]["error"]["type"] == "not_an_image"
    assert "regular file" in recs[1]["error"]["message"] and res.code == 1


@pytest.mark.timeout(60)
def test_a_path_with_a_nul_byte_from_stdin_is_not_found(checkpoint, cli):
    res = cli("-", "-a", "resnet18", "-w", checkpoint("resnet18"), "-f", "jsonl", stdin=b"bad\x00name.jpg\n")
    assert res.jsonl()[0]["error"]["type"] == "not_found"


ODD_NAMES = ["it's \"quoted\".jpg", "comma, separated.jpg", "new\nline.jpg", "café – 猫.jpg", "tab\there.jpg"]


@pytest.fixture
def odd_folder(tmp_path):
    import shutil

    folder = tmp_path / "odd"
    folder.mkdir()
    names = [os.fsencode(n) for n in ODD_NAMES] + [b"latin1-\xe9t\xe9.jpg"]  # not valid UTF-8
    for n in names:
        shutil.copy(PHOTOS[1], os.path.join(os.fsencode(folder), n))
    return folder, sorted(os.path.join(os.fsencode(folder), n) for n in names)


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_odd_file_names_identify_their_file_in_every_format(odd_folder, checkpoint, cli, fmt, tmp_path):
    folder, paths = odd_folder
    out = tmp_path / f"out.{fmt}"
    res = cli(folder, "-a", "resnet18", "-w", checkpoint("resnet18"), "-f", fmt, "-o", out, "-k", "2")
    assert res.code == 0, res.stderr
    if fmt == "csv":
        text = out.read_bytes().decode("utf-8", "surrogateescape")
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        found = [os.fsencode(r["path"]) for r in rows if r["rank"] == "1"]
    else:
        raw = out.read_bytes()
        raw.decode("utf-8")  # valid UTF-8 whatever the names' bytes
        recs = json.loads(raw) if fmt == "json" else [json.loads(x) for x in raw.splitlines()]
        found = [os.fsencode(r["path"]) for r in recs]
    assert found == paths
    for p in found:
        assert os.path.exists(p)


def test_odd_file_names_stay_one_line_in_the_table_and_on_stderr(odd_folder, checkpoint, cli):
    folder, paths = odd_folder
    os.unlink(paths[0])  # one of them now fails: its stderr line must stay one line too
    res = cli(*[os.fsdecode(p) for p in paths], "-a", "resnet18", "-w", checkpoint("resnet18"), "-f", "table",
              "-k", "1")
    assert res.code == 1
    assert len(res.stderr.strip().splitlines()) == 1 and "not_found" in res.stderr
    assert "new\\nline.jpg" in res.text and "latin1-\\xe9t\\xe9.jpg" in res.text


# ---- URLs, against a server on this machine -------------------------------------------------------------

SMALL_PHOTO = next(p for p in PHOTOS if p.name == "grace_hopper.jpg")  # 61 kB


class _Handler(http.server.BaseHTTPRequestHandler):
    requests = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).requests += 1
        if self.path == "/trickle.jpg":  # a byte every 0.2 s, for 8 s: each read succeeds, the whole does not
            self.send_response(200)
            self.send_header("Content-Length", "40")
            self.end_headers()
            for _ in range(40):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return
                time.sleep(0.2)
            return
        if self.path == "/photo.jpg":
            body = SMALL_PHOTO.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
        elif self.path == "/page.jpg":
            body = b"<!doctype html><html><body>Sign in to see this photo</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
        elif self.path == "/slow.jpg":
            time.sleep(2.5)  # longer than the test's 1 s timeout; bounded so the server thread ends
            body = b""
            self.send_response(200)
        elif self.path == "/huge.jpg":
            body = b"\xff\xd8\xff" + b"\0" * 300_000
            self.send_response(200)
        else:
            body = b"not found"
            self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.timeout(90)
def test_urls_classify_or_fail_with_their_reason_in_order(http_server, checkpoint, cli, monkeypatch):
    monkeypatch.setattr(net, "URL_TIMEOUT_S", 1.0)
    monkeypatch.setattr(net, "MAX_URL_BYTES", 200_000)
    urls = [f"{http_server}/{p}" for p in ("photo.jpg", "missing.jpg", "page.jpg", "slow.jpg", "huge.jpg")]
    t0 = time.monotonic()
    res = cli(*urls, PHOTOS[1], "-a", "resnet18", "-w", checkpoint("resnet18"), "-f", "jsonl", "-k", "3")
    assert time.monotonic() - t0 < 20
    recs = res.jsonl()
    assert [r["path"] for r in recs] == urls + [str(PHOTOS[1])]
    kinds = [r.get("error", {}).get("type", OK) for r in recs]
    assert kinds == [OK, "download_failed", "not_an_image", "timeout", "too_large", OK]
    assert "404" in recs[1]["error"]["message"]
    assert res.code == 1
    local = cli(SMALL_PHOTO, "-a", "resnet18", "-w", checkpoint("resnet18"), "-f", "jsonl", "-k", "3").jsonl()[0]
    # batch composition changes float rounding only (oneDNN picks kernels by batch shape)
    assert [t["index"] for t in recs[0]["topk"]] == [t["index"] for t in local["topk"]]
    for a, b in zip(recs[0]["topk"], local["topk"]):
        assert abs(a["probability"] - b["probability"]) < 1e-5


@pytest.mark.timeout(60)
def test_offline_never_fetches_url_inputs(http_server, checkpoint, cli):
    requests_before = _Handler.requests
    res = cli(f"{http_server}/photo.jpg", SMALL_PHOTO, "-a", "resnet18", "-w", checkpoint("resnet18"),
              "--offline", "-f", "jsonl")
    recs = res.jsonl()
    assert recs[0]["error"]["type"] == "download_failed" and "--offline" in recs[0]["error"]["message"]
    assert "topk" in recs[1]
    assert _Handler.requests == requests_before  # the server never heard from us


@pytest.mark.timeout(30)
def test_a_server_that_trickles_bytes_is_cut_off_at_the_timeout(http_server, monkeypatch):
    from resnet_cli.core.errors import InputError

    t0 = time.monotonic()
    with pytest.raises(InputError) as exc:
        net.fetch_image_bytes(f"{http_server}/trickle.jpg", timeout=1.0)
    assert exc.value.kind == "timeout"
    assert time.monotonic() - t0 < 2.5
