"""The command line as a new user and a hostile file meet it: words that are commands, usage errors in one style
and the tool's own words, text from models and servers kept off the terminal's controls, Ctrl-C above the
progress bar, a quiet Ray, and help that says what the options do."""

from __future__ import annotations

import html
import http.server
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading

import pytest

from checkpoints import PHOTOS, ROOT

PROG = "resnet-classify"
COMMANDS = ("classify", "explain", "evaluate", "embed", "similar", "train", "models", "download", "arch")


@pytest.fixture
def no_weights(monkeypatch):
    """Any attempt to look up, load or download weights fails the test loudly."""
    from resnet_cli.models import inference, resolve, weights

    def boom(*args, **kwargs):
        raise AssertionError("weights were looked up or loaded")

    for module, name in ((weights, "ensure_available"), (inference, "load_for"), (resolve, "resolve")):
        monkeypatch.setattr(module, name, boom)


# ---- `help`, `version` and bare words: answered before any weights (issue 18, point 13) ----------------------

@pytest.mark.parametrize("argv, expected", [
    (["help"], "Commands:"),
    (["help", "explain"], f"Usage: {PROG} explain"),
    (["help", "evaluate"], f"Usage: {PROG} evaluate"),
    (["version"], f"{PROG} "),
])
def test_help_and_version_as_words_do_what_they_say_without_loading_weights(argv, expected, cli, no_weights,
                                                                            tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = cli(*argv)
    assert res.code == 0, res.stderr
    assert expected in res.text and res.stderr == ""
    if argv == ["version"]:
        from resnet_cli import __version__

        assert res.text.strip() == f"{PROG} {__version__}"


@pytest.mark.parametrize("argv", [
    ["nothere"], ["lsit"], ["nothere", "--offline"], ["nothere", "-k", "3", "--offline"], ["classify", "nothere"],
    ["nothere", "other"], ["explain", "nothere"], ["embed", "nothere", "-o", "vectors.npy"],
])
def test_a_bare_word_that_names_no_file_is_a_usage_error_before_any_weights(argv, cli, no_weights, tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = cli(*argv)
    assert res.code == 2 and res.stdout == b""
    assert res.stderr.startswith(f"{PROG}: error: 'nothere'" if "nothere" in argv else f"{PROG}: error: 'lsit'")
    assert "neither a file nor a command" in res.stderr or "neither files nor commands" in res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_a_missing_bare_word_beside_a_real_photo_is_a_not_found_record_in_its_place(cli, checkpoint, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = cli("nothere", str(PHOTOS[0]), "-a", "resnet18", "-w", checkpoint("resnet18"), "-f", "jsonl", "-k", "1")
    recs = res.jsonl()
    assert res.code == 1
    assert recs[0] == {"path": "nothere", "error": {"type": "not_found", "message": "no such file"}}
    assert recs[1]["path"] == str(PHOTOS[0]) and len(recs[1]["topk"]) == 1


def test_a_file_named_help_is_reached_as_dot_slash_help(cli, checkpoint, tmp_path, monkeypatch):
    (tmp_path / "help").write_bytes(PHOTOS[0].read_bytes())
    monkeypatch.chdir(tmp_path)
    assert "Commands:" in cli("help").text
    res = cli("./help", "-a", "resnet18", "-w", checkpoint("resnet18"), "-f", "jsonl", "-k", "1")
    assert res.code == 0 and res.jsonl()[0]["path"] == "./help"


# ---- usage errors: one line, one style, the tool's words (issue 18, point 15) -------------------------------

@pytest.mark.parametrize("argv, names", [
    (["x.jpg", "--format", "xml"], "--format xml: use table, json, jsonl or csv"),
    (["x.jpg", "--topk", "0"], "--topk 0: must be at least 1"),
    (["x.jpg", "-k", "abc"], "--topk abc: not a whole number"),
    (["x.jpg", "-k"], "-k needs a value"),
    (["x.jpg", "--precision", "fp64"], "--precision fp64: use fp32, bf16 or fp16"),
    (["x.jpg", "--bogus"], "classify has no option --bogus"),
    (["x.jpg", "--topc", "3"], "did you mean"),
    (["classify", "-a", "resnet18"], "classify needs INPUT..."),
    (["explain", "x.jpg", "--method", "foo"], "--method foo: use gradcam, gradcam++ or layercam"),
    (["embed", "x.jpg", "-o", "e.npy", "--workers", "0"], "--workers 0: must be at least 1"),
    (["evaluate", "data", "--format", "csv"], "--format csv: use table or json"),
    (["similar", "-i", "x.npy", "-t", "3"], "--threshold 3: must be at most 1"),
    (["similar", "q.jpg", "-i", "x.npy", "-k", "-1"], "--k -1: must be at least 1"),
    (["train", "data", "-o", "m.safetensors", "--val", "0.95"], "--val 0.95: must be at most 0.9"),
    (["train", "data", "-o", "m.safetensors", "--val", "lots"], "--val lots: not a number"),
    (["train", "data"], "train needs --output"),
    (["models", "--format", "csv"], "--format csv: use table, json or jsonl"),
    (["models", "extra"], "extra"),
    (["arch", "resnet18", "--format", "jsonl"], "--format jsonl: use table or json"),
    (["download", "resnet18", "--bogus"], "download has no option --bogus"),
])
def test_every_usage_error_is_one_line_in_the_tools_own_words(argv, names, cli, no_weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = cli(*argv)
    assert res.code == 2 and res.stdout == b""
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: "), res.stderr
    assert names in lines[0]
    for library_words in ("Usage:", "Error:", "Try '", "Value error", "Input should", "Invalid value", "valid integer",
                          "unable to parse", "pydantic"):
        assert library_words not in res.stderr


def _help(*argv) -> str:
    import resnet_cli

    here = os.path.dirname(os.path.dirname(resnet_cli.__file__))  # the code under test, wherever it is
    res = subprocess.run([sys.executable, "-m", "resnet_cli", *argv, "--help"], cwd=here, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "COLUMNS": "100"})
    assert res.returncode == 0, res.stderr
    return " ".join(res.stdout.split())


@pytest.mark.timeout(300)
def test_help_shows_no_python_types_and_only_options_the_command_has():
    texts = {command: _help(command) for command in COMMANDS}
    texts["(top)"] = _help()
    for command, text in texts.items():
        assert not re.search(r"<(list|str|int|float|bool)\b", text), command
        assert "{" not in text.split("Arguments:")[0], command  # usage: INPUT..., not {INPUT...}...
    for command in ("explain", "similar", "train"):  # no --engine: their help does not speak of one
        assert "--engine" not in texts[command] and "ray" not in texts[command].lower(), command
    for command in ("classify", "evaluate", "embed"):
        assert "--engine ray" in texts[command]
    assert f"Usage: {PROG} classify [OPTIONS] INPUT..." in texts["classify"]
    # -b: what it changes (grouping), and that it never changes an answer (the network's shape is fixed)
    batch = texts["classify"].split("--batch-size", 1)[1].split("--workers", 1)[0]
    assert "per forward pass" not in batch and "chunks of 8" in batch and "never the answers" in batch
    # bf16 is approximate, in the help (issue 18, point 21)
    precision = texts["classify"].split("--precision", 1)[1].split("--batch-size", 1)[0]
    assert "approximate" in precision and "bf16" in precision


# ---- text from models and servers never drives the terminal (issue 17, C14) ---------------------------------

EVIL = "\x1b[2J\x1b]0;pwned\x07evil\u202eenil"  # clear screen, set the title, right-to-left override


@pytest.fixture
def evil_labels(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("".join(f"{EVIL}{i}\n" for i in range(1000)), encoding="utf-8")
    return path


def test_labels_reach_the_table_escaped_and_the_data_exact(evil_labels, checkpoint, cli):
    common = ("-a", "resnet18", "-w", checkpoint("resnet18"), "--labels", evil_labels, "-k", "2")
    table = cli(PHOTOS[0], *common, "-f", "table")
    assert table.code == 0, table.stderr
    text = table.text
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "\\x1b[2J" in text and "\\u202e" in text  # shown, as escapes
    data = cli(PHOTOS[0], *common, "-f", "jsonl").jsonl()[0]
    assert data["topk"][0]["label"].startswith(EVIL)  # programs get the exact value
    index = data["topk"][0]["index"]
    assert data["topk"][0]["label"] == f"{EVIL}{index}"


def test_labels_in_the_report_are_escaped_and_isolated(evil_labels, checkpoint, cli, tmp_path):
    page = tmp_path / "report.html"
    res = cli(PHOTOS[0], "-a", "resnet18", "-w", checkpoint("resnet18"), "--labels", evil_labels, "-k", "2",
              "-f", "jsonl", "--report", page)
    assert res.code == 0, res.stderr
    text = page.read_text(encoding="utf-8")
    shown = re.findall(r'<span class="l">(.*?)</span>', text)
    assert len(shown) == 2
    for cell in shown:
        assert cell.startswith("<bdi>") and cell.endswith("</bdi>")
        assert "\u202e" not in cell and "\x1b" not in cell and "\\u202e" in html.unescape(cell)
    visible = re.sub(r'<[^>]*>', "", text.split("<body", 1)[1])  # text nodes only (attributes keep exact values)
    assert "\x1b" not in visible and "\u202e" not in visible


def test_a_servers_reason_phrase_reaches_stderr_escaped(checkpoint, cli):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.wfile.write(b"HTTP/1.1 404 Not\x1b[2JFound\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/photo.jpg"
        res = cli(url, "-a", "resnet18", "-w", checkpoint("resnet18"), "-f", "jsonl")
    finally:
        server.shutdown()
    assert res.code == 1 and res.jsonl()[0]["error"]["type"] == "download_failed"
    line = [x for x in res.stderr.splitlines() if url in x]
    assert line and "\x1b" not in res.stderr and "\\x1b[2J" in line[0]


@pytest.mark.parametrize("argv", [
    ["x.jpg", "--report", f"{EVIL}.txt"],
    ["x.jpg", "-o", f"{EVIL}/out.jsonl"],
    ["train", "data", "-o", f"{EVIL}.pth"],
    ["x.jpg", "--device", EVIL],
])
def test_usage_errors_that_quote_a_name_escape_it(argv, cli, no_weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = cli(*argv)
    assert res.code == 2 and res.stderr.startswith(f"{PROG}: error: ")
    assert "\x1b" not in res.stderr and "\x07" not in res.stderr and "\u202e" not in res.stderr, repr(res.stderr)
    assert "\\x1b[2J" in res.stderr


# ---- Ctrl-C on a terminal: the line goes above the bar, the bar stops (issue 18, point 19) ------------------

def test_the_stopping_line_is_printed_above_the_progress_bar_which_then_stops(monkeypatch):
    from rich.console import Console

    from resnet_cli.cli.commands import stream as stream_module
    from resnet_cli.run.job import Job
    from resnet_cli.core.records import Failure
    from resnet_cli.inputs.sources import Listing

    screen = io.StringIO()
    made = []

    def bar(stderr, *, unit="img"):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            console=Console(file=screen, force_terminal=True, width=80), transient=True,
                            refresh_per_second=50)
        made.append(progress)
        return progress

    monkeypatch.setattr(stream_module, "progress_bar", bar)
    monkeypatch.setattr(stream_module, "isatty", lambda stream: True)

    def records():
        for i in range(6):
            if i == 2:
                signal.raise_signal(signal.SIGINT)  # Ctrl-C while the bar is live
            yield Failure(f"img{i}.jpg", "not_found", "no such file")

    job = Job(inputs=Listing([]), weights=None, task=None)
    seen = []
    with stream_module.RecordStream(job, "classifying", failure_lines=False, stderr=io.StringIO(), total=6,
                                    records=records()) as stream:
        for rec in stream:
            seen.append(rec.path)
    assert stream.interrupted and seen
    out = screen.getvalue()
    assert "stopping after the images in progress" in out  # through the bar's own console: rich puts it above
    before, after = out.split(f"{PROG}: stopping", 1)
    assert re.search(r"(\n|\x1b\[2K|\r)$", before), repr(before[-40:])  # the line starts a line of its own
    # the bar is not redrawn for the 4 records still coming out: no frame after the line counts past 2, the
    # images done when the signal came (rich may repeat a frame it had, and then erases the bar)
    assert max(map(int, re.findall(r"(\d)/6", after)), default=0) <= 2, repr(after)
    assert not made[0].live.is_started


# ---- Ray: no alarming line, no DeprecationWarning (issue 18, point 19) -------------------------------------

@pytest.mark.ray
@pytest.mark.timeout(400, method="thread")
def test_a_ray_run_prints_nothing_alarming(checkpoint):
    res = subprocess.run([sys.executable, "-m", "resnet_cli", str(PHOTOS[0]), "-a", "resnet18", "-w",
                          str(checkpoint("resnet18")), "--engine", "ray", "--workers", "1", "-f", "jsonl", "-k", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=380,
                         env={**os.environ, "PYTHONWARNINGS": "default"})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["path"] == str(PHOTOS[0])
    assert "core_worker" not in res.stderr and "DeprecationWarning" not in res.stderr, res.stderr
    assert res.stderr == "", res.stderr
