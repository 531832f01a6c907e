"""Options are checked at the edge: choices, minimums, typos and cross-option rules fail at once, before torch
is imported, weights are looked up or anything is decoded; help reads well at 80 columns."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time

import pytest

from checkpoints import PHOTOS, ROOT


def run_cli(*argv, env=None, timeout=60) -> subprocess.CompletedProcess:
    """The real command in a subprocess, with a marker on stderr telling whether torch was imported."""
    code = ("import sys; from resnet_cli.cli import run; c = run(sys.argv[1:]); "
            "print('TORCH-IMPORTED' if 'torch' in sys.modules else 'TORCH-NOT-IMPORTED', file=sys.stderr); "
            "sys.exit(c)")
    return subprocess.run([sys.executable, "-c", code, *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("argv, message", [
    (["modles"], "did you mean models?"),
    (["dowload", "resnet50"], "did you mean download?"),
    (["clasify", "photo.jpg"], "did you mean classify?"),
])
def test_a_misspelled_command_is_a_usage_error_within_a_second(argv, message, tmp_path):
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "resnet_cli", *argv], cwd=tmp_path, capture_output=True, text=True,
                         timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})
    elapsed = time.monotonic() - start
    assert res.returncode == 2 and message in res.stderr and res.stdout == ""
    assert elapsed < 1.5, f"{elapsed:.2f} s"  # interpreter start included; no weights, no torch
    assert res.stderr.count("\n") == 1


def test_a_file_named_like_a_typo_is_classified_not_refused(tmp_path, checkpoint):
    (tmp_path / "modles").write_bytes(PHOTOS[0].read_bytes())
    res = subprocess.run([sys.executable, "-m", "resnet_cli", "modles", "-a", "resnet18", "-w",
                          str(checkpoint("resnet18")), "-f", "jsonl"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    assert '"path": "modles"' in res.stdout


def test_a_missing_file_that_looks_like_a_command_is_a_missing_input(tmp_path, checkpoint, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = cli("modles.jpg", "-a", "resnet18", "-w", checkpoint("resnet18"), "-f", "jsonl")
    assert res.code == 1 and res.jsonl() == [{"path": "modles.jpg", "error": {"type": "not_found",
                                                                                "message": "no such file"}}]


@pytest.mark.parametrize("argv, message", [
    (["--precision", "fp64"], "--precision fp64: use fp32, bf16 or fp16"),
    (["--engine", "spark"], "--engine spark: use local or ray"),
    (["--format", "xml"], "--format xml: use table, json, jsonl or csv"),
    (["--topk", "0"], "--topk 0: must be at least 1"),
    (["--workers", "0"], "--workers 0: must be at least 1"),
    (["--resize", "-3"], "--resize -3: must be at least 1"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--device", "cpu", "--precision", "fp16"], "fp16 needs a GPU"),
    (["--resume"], "--resume needs --output"),
    (["--ray-address", "auto"], "--ray-address needs --engine ray"),
    (["-o", "/nonexistent/out.jsonl"], "does not exist"),
    (["--offline"], "not in the cache"),
])
def test_bad_options_fail_before_torch_is_imported(argv, message):
    res = run_cli(PHOTOS[0], *argv)  # default weights: published resnet50, not cached in the tests' TORCH_HOME
    assert res.returncode == (3 if argv == ["--offline"] else 2), res.stderr  # 3: weights unavailable
    assert message in res.stderr
    assert "TORCH-NOT-IMPORTED" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("command, bad, offered", [
    (["models"], "csv", "use table, json or jsonl"),
    (["arch", "resnet18"], "jsonl", "use table or json"),
])
def test_each_command_offers_only_the_formats_it_writes(command, bad, offered):
    res = run_cli(*command, "--format", bad)
    assert res.returncode == 2 and offered in res.stderr and "TORCH-NOT-IMPORTED" in res.stderr
    help_text = run_cli(*command, "--help").stdout
    assert bad not in help_text.split("--format", 1)[1].split("\n")[0]


def test_engine_ray_with_fp16_is_not_refused_on_the_drivers_account():
    """This machine has no GPU; with --engine ray the cluster decides, so the edge lets it through (and the run
    goes on to the weights, which are what stops it here: not cached, offline)."""
    res = run_cli(PHOTOS[0], "--engine", "ray", "--precision", "fp16", "--offline")
    assert res.returncode == 3 and "not in the cache" in res.stderr and "fp16" not in res.stderr


def test_help_reads_well_at_80_columns():
    res = subprocess.run([sys.executable, "-m", "resnet_cli", "classify", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "COLUMNS": "80"})
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert max(map(len, lines)) <= 80
    assert "…" not in res.stdout  # nothing cut short
    assert "<bool>" not in res.stdout and "<str>" not in res.stdout and "<int>" not in res.stdout
    assert "pip install 'resnet-classify[ray]'" in " ".join(res.stdout.split())  # not eaten as markup
    assert "<table|json|jsonl|csv>" in res.stdout  # the choices, on one line
    assert "--engine local: decode threads" in " ".join(res.stdout.split())  # --workers says both meanings


def test_shell_completion_is_available():
    # Typer finds the shell among the process's parents (`--show-completion` takes no value): run it from bash,
    # as a user does (`; true` keeps bash from replacing itself with the command).
    res = subprocess.run(["bash", "-c", f"'{sys.executable}' -m resnet_cli --show-completion; true"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "_RESNET_CLASSIFY_COMPLETE=complete_bash" in res.stdout
    # and the script's protocol completes command names and options
    env = {**os.environ, "_RESNET_CLASSIFY_COMPLETE": "complete_bash", "COMP_CWORD": "1",
           "COMP_WORDS": "resnet-classify mod"}
    res = subprocess.run([sys.executable, "-c", "from resnet_cli.cli import main; main()"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.stdout.split() == ["models"]


def test_device_messages_name_the_device_asked_for(checkpoint):
    import torch

    if torch.cuda.is_available():
        res = run_cli(PHOTOS[0], "-a", "resnet18", "-w", checkpoint("resnet18"), "--device", "cuda:99")
        assert res.returncode == 2 and "--device cuda:99: only" in res.stderr
    else:
        res = run_cli(PHOTOS[0], "-a", "resnet18", "-w", checkpoint("resnet18"), "--device", "cuda:1")
        assert res.returncode == 2 and "--device cuda:1: no CUDA GPU is available here (try --device cpu)" in res.stderr


def test_arch_table_has_no_trailing_spaces_in_a_pipe():
    res = run_cli("arch", "resnet50", "--blocks")
    assert res.returncode == 0
    assert all(line == line.rstrip() for line in res.stdout.splitlines())
    assert "layer4" in res.stdout


def test_download_failure_gives_no_advice_meant_for_classify():
    res = run_cli("download", "resnet18", env={"RESNET_CLASSIFY_OFFLINE": ""}, timeout=120)
    # no network here: the download fails (or, offline, is refused); either way no "--weights PATH" advice, and
    # the exit code of unavailable weights, not of a typo
    assert res.returncode == 3
    assert "--weights PATH" not in res.stderr


@pytest.mark.timeout(180, method="thread")  # a hung Ray call ignores SIGALRM
def test_offline_under_ray_sends_no_request(checkpoint, cli):
    """--offline means no request leaves the process, whatever the engine: a local server counts them."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            body = PHOTOS[0].read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/photo.png"
    try:
        for engine in ("local", "ray"):
            res = cli(url, str(PHOTOS[1]), "-a", "resnet18", "-w", checkpoint("resnet18"), "--offline",
                      "--engine", engine, "--workers", "1", "-f", "jsonl")
            recs = res.jsonl()
            assert res.code == 1, res.stderr
            assert recs[0]["error"]["type"] == "download_failed" and "--offline" in recs[0]["error"]["message"]
            assert "topk" in recs[1]
        assert hits == []
        # the same URL without --offline is fetched: the server does answer
        res = cli(url, "-a", "resnet18", "-w", checkpoint("resnet18"), "-f", "jsonl")
        assert res.code == 0 and hits == ["/photo.png"]
    finally:
        server.shutdown()


def test_cloud_inputs_without_pyarrow_are_a_usage_error_naming_the_extra(cli, monkeypatch, checkpoint):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what the import meets when pyarrow is not installed
    res = cli("s3://bucket/photos/", "-a", "resnet18", "-w", checkpoint("resnet18"))
    assert res.code == 2 and "pip install 'resnet-classify[cloud]'" in res.stderr and res.stdout == b""
    # offline, nothing would be read: no pyarrow needed, the input is a failure record
    res = cli("s3://bucket/photo.jpg", "-a", "resnet18", "-w", checkpoint("resnet18"), "--offline", "-f", "jsonl")
    assert res.code == 1 and res.jsonl()[0]["error"]["type"] == "download_failed"
