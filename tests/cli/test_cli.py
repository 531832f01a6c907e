"""The command line as users drive it: commands, inputs, formats, options and exit codes."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys

import pytest

from checkpoints import PHOTOS, ROOT
from resnet_cli.models import registry


@pytest.fixture
def r18(checkpoint):
    return ("-a", "resnet18", "-w", str(checkpoint("resnet18")))


def paths(res) -> list[str]:
    return [r["path"] for r in res.jsonl()]


# ---- start-up and routing -----------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["--help"], ["classify", "--help"], ["models", "--help"], ["arch", "--help"]])
@pytest.mark.timeout(90)
def test_help_answers_without_importing_torch(argv):
    code = ("import sys; from resnet_cli.cli import run; code = run(%r); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(code)" % argv)
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "Usage" in res.stdout


@pytest.mark.timeout(270)
def test_console_script_and_module_both_run(r18):
    for cmd in ([sys.executable, "-m", "resnet_cli"], [os.path.join(os.path.dirname(sys.executable), "resnet-classify")]):
        res = subprocess.run([*cmd, str(PHOTOS[0]), *r18, "-k", "2"], cwd=ROOT, capture_output=True, timeout=120)
        assert res.returncode == 0, res.stderr
        rec = json.loads(res.stdout)  # stdout is not a terminal: JSON Lines by default
        assert rec["path"] == str(PHOTOS[0]) and len(rec["topk"]) == 2


def test_default_command_is_classify_and_a_file_named_like_a_command_is_reachable(tmp_path, r18, cli, monkeypatch):
    shutil.copy(PHOTOS[0], tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    a = cli("./models", *r18, "-f", "jsonl")
    b = cli("classify", "./models", *r18, "-f", "jsonl")
    assert a.code == b.code == 0
    assert a.jsonl() == b.jsonl() and a.jsonl()[0]["path"] == "./models"


# ---- usage errors: exit 2, one clear message, nothing on stdout -------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["-a", "resnet5O"], "did you mean resnet50"),
    (["-a", "resnet18", "-k", "0"], "--topk 0: must be at least 1"),
    (["-k", "1001"], "more than the model's 1000 classes"),
    (["--precision", "fp16", "--device", "cpu"], "fp16 needs a GPU"),
    (["--device", "tpu"], "unknown device"),
    (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--resume"], "--resume needs --output"),
    (["--crop", "0"], "--crop 0: must be at least 1"),
])
def test_usage_errors_exit_2_with_a_clear_message(argv, message, r18, cli):
    args = list(r18) if "-a" not in argv else ["-w", r18[3]]
    res = cli(PHOTOS[0], *args, *argv)
    assert res.code == 2
    assert message in res.stderr
    assert res.stdout == b""
    assert "Traceback" not in res.stderr


def test_cuda_asked_for_on_a_machine_without_one_is_a_usage_error(r18, cli):
    import torch

    res = cli(PHOTOS[0], *r18, "--device", "cuda")
    if torch.cuda.is_available():
        assert res.code == 0
    else:
        assert res.code == 2 and "no CUDA GPU" in res.stderr


# ---- inputs ---------------------------------------------------------------------------------------------

def test_folder_is_sorted_images_only_and_recursive_descends(photos_dir, r18, cli):
    (photos_dir / "notes.txt").write_text("not an image, and not an image extension: skipped")
    sub = photos_dir / "b_sub"
    sub.mkdir()
    shutil.copy(PHOTOS[0], sub / "inner.JPG")
    flat = paths(cli(photos_dir, *r18, "-f", "jsonl", "-k", "1"))
    assert [os.path.basename(p) for p in flat] == sorted(p.name for p in PHOTOS)
    deep = paths(cli(photos_dir, *r18, "-f", "jsonl", "-k", "1", "--recursive"))
    assert len(deep) == len(PHOTOS) + 1
    assert os.path.join(photos_dir, "b_sub", "inner.JPG") in deep


def test_quoted_globs_expand_in_sorted_order_and_an_empty_glob_is_a_failure(photos_dir, r18, cli):
    res = cli(str(photos_dir / "*.png"), str(photos_dir / "*.gif"), *r18, "-f", "jsonl", "-k", "1")
    recs = res.jsonl()
    assert [os.path.basename(r["path"]) for r in recs[:-1]] == sorted(p.name for p in PHOTOS if p.suffix == ".png")
    assert recs[-1]["error"]["type"] == "not_found" and res.code == 1


@pytest.mark.timeout(60)
def test_stdin_paths_one_a_line_in_order(photos_dir, r18, cli):
    names = [PHOTOS[3], PHOTOS[0], PHOTOS[5]]
    stdin = b"".join(os.fsencode(p) + b"\r\n" for p in names) + b"\n\n"  # CRLF and blank lines tolerated
    res = cli("-", *r18, "-f", "json", "-k", "1", stdin=stdin)
    assert res.code == 0
    assert [r["path"] for r in json.loads(res.stdout)] == [str(p) for p in names]


@pytest.mark.timeout(60)
def test_stdin_nul_separated_carries_newlines_in_names(tmp_path, r18, cli):
    odd = tmp_path / "two\nlines.jpg"
    shutil.copy(PHOTOS[5], odd)
    res = cli("-", "--null", *r18, "-f", "jsonl", "-k", "1", stdin=os.fsencode(odd) + b"\0" +
              os.fsencode(PHOTOS[4]) + b"\0")
    assert paths(res) == [str(odd), str(PHOTOS[4])]


def test_exit_code_is_0_when_all_classified_and_1_when_some_failed_with_the_rest_still_emitted(tmp_path, r18, cli):
    assert cli(PHOTOS[0], PHOTOS[1], *r18, "-f", "jsonl").code == 0
    res = cli(PHOTOS[0], tmp_path / "gone.jpg", PHOTOS[1], *r18, "-f", "jsonl")
    assert res.code == 1
    recs = res.jsonl()
    assert ["topk" in r for r in recs] == [True, False, True]


# ---- output formats ------------------------------------------------------------------------------------

def test_json_is_one_array_and_jsonl_one_record_a_line_with_the_documented_schema(r18, cli):
    j = json.loads(cli(*PHOTOS[:3], *r18, "-f", "json", "-k", "3").stdout)
    lines = cli(*PHOTOS[:3], *r18, "-f", "jsonl", "-k", "3").text.splitlines()
    assert len(lines) == 3 and [json.loads(x) for x in lines] == j
    rec = j[0]
    assert set(rec) == {"path", "arch", "weights", "preprocess", "topk"}
    assert rec["preprocess"] == {"resize": 256, "crop": 224}  # resnet18's DEFAULT transforms
    assert [set(t) for t in rec["topk"]] == [{"rank", "index", "label", "probability"}] * 3
    probs = [t["probability"] for t in rec["topk"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert all(t["label"] == registry.categories()[t["index"]] for t in rec["topk"])


def test_empty_input_gives_an_empty_array_nothing_or_a_note(tmp_path, r18, cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(empty, *r18, "-f", "json").stdout == b"[]\n"
    assert cli(empty, *r18, "-f", "jsonl").stdout == b""
    res = cli(empty, *r18, "-f", "table")
    assert res.stdout == b"" and "no images" in res.stderr and res.code == 0


def test_csv_has_a_row_per_path_and_rank_and_failures_fill_the_error_columns(tmp_path, r18, cli):
    res = cli(PHOTOS[0], tmp_path / "gone.jpg", *r18, "-f", "csv", "-k", "2")
    rows = list(csv.DictReader(io.StringIO(res.text)))
    assert [(os.path.basename(r["path"]), r["rank"], r["error_type"]) for r in rows] == [
        (PHOTOS[0].name, "1", ""), (PHOTOS[0].name, "2", ""), ("gone.jpg", "", "not_found")]
    ref = cli(PHOTOS[0], *r18, "-f", "jsonl", "-k", "2").jsonl()[0]["topk"]
    assert [float(r["probability"]) for r in rows[:2]] == [t["probability"] for t in ref]
    assert rows[0]["label"] == ref[0]["label"]


def test_table_shows_each_file_with_ranked_labels_and_percentages(r18, cli):
    res = cli(PHOTOS[4], *r18, "-f", "table", "-k", "3")
    top = cli(PHOTOS[4], *r18, "-f", "jsonl", "-k", "3").jsonl()[0]["topk"]
    assert PHOTOS[4].name in res.text
    for t in top:
        assert t["label"] in res.text and f"{t['probability']:.2%}" in res.text


def test_output_file_format_follows_its_extension(tmp_path, r18, cli):
    for name, check in (("p.json", json.loads), ("p.jsonl", lambda s: [json.loads(x) for x in s.splitlines()]),
                        ("p.csv", lambda s: list(csv.DictReader(io.StringIO(s))))):
        res = cli(PHOTOS[0], *r18, "-o", tmp_path / name, "-k", "1")
        assert res.code == 0 and res.stdout == b""
        assert len(check((tmp_path / name).read_text())) == 1


# ---- models ---------------------------------------------------------------------------------------------

def test_models_json_lists_all_ten_architectures_and_what_is_cached(tmp_path, checkpoint, cli):
    cache = os.path.join(os.environ["TORCH_HOME"], "hub", "checkpoints")
    os.makedirs(cache, exist_ok=True)
    shutil.copy(checkpoint("resnet18"), os.path.join(cache, "resnet18-f37072fd.pth"))
    res = cli("models", "--format", "json")
    data = json.loads(res.stdout)
    assert [m["arch"] for m in data] == list(registry.architectures())
    r50 = next(m for m in data if m["arch"] == "resnet50")
    assert r50["default"] == "IMAGENET1K_V2" and [w["name"] for w in r50["weights"]] == ["IMAGENET1K_V1",
                                                                                          "IMAGENET1K_V2"]
    assert set(r50["weights"][1]) == {"name", "acc@1", "acc@5", "params", "gflops", "file_size_mb", "resize", "crop",
                                      "url", "cached"}
    assert r50["weights"][1]["resize"] == 232 and r50["weights"][1]["acc@1"] == 80.858
    cached = {(m["arch"], w["name"]) for m in data for w in m["weights"] if w["cached"]}
    assert cached == {("resnet18", "IMAGENET1K_V1")}
    table = cli("models", "--format", "table").text
    assert all(a in table for a in registry.architectures())


# ---- options that change the preprocessing or the numbers ---------------------------------------------------

def test_resize_and_crop_overrides_match_torchvision_and_are_named_in_the_output(checkpoint, cli):
    import torch
    import torchvision
    from PIL import Image
    from torchvision.transforms._presets import ImageClassification

    ckpt = checkpoint("resnet18")
    res = cli(*PHOTOS[:3], "-a", "resnet18", "-w", ckpt, "--resize", "160", "--crop", "128", "-f", "jsonl")
    model = torchvision.models.resnet18()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()
    tf = ImageClassification(crop_size=128, resize_size=160)
    for rec, photo in zip(res.jsonl(), PHOTOS[:3]):
        assert rec["preprocess"] == {"resize": 160, "crop": 128}
        with torch.inference_mode():
            probs = model(tf(Image.open(photo).convert("RGB"))[None]).softmax(1)[0]
        assert [t["index"] for t in rec["topk"]] == probs.topk(5).indices.tolist()
    alone = cli(PHOTOS[0], "-a", "resnet18", "-w", ckpt, "--crop", "320", "-f", "jsonl").jsonl()[0]
    assert alone["preprocess"] == {"resize": 366, "crop": 320}  # the V1 ratio 256/224 is kept


def test_bf16_runs_and_mostly_agrees_with_fp32(checkpoint, cli):
    from resnet_cli.models import fused

    ckpt = checkpoint("resnet50")
    args = (*PHOTOS, "-a", "resnet50", "-w", ckpt, "-f", "jsonl")
    res = cli(*args, "--precision", "bf16")
    if not fused.bf16_supported():
        assert res.code == 2 and "bf16" in res.stderr
        return
    fp32 = cli(*args).jsonl()
    bf16 = res.jsonl()
    assert res.code == 0
    same_top1 = sum(a["topk"][0]["index"] == b["topk"][0]["index"] for a, b in zip(fp32, bf16))
    assert same_top1 >= len(PHOTOS) - 1


def test_fast_decode_keeps_the_answer_on_a_large_photo(tmp_path, checkpoint, cli):
    from PIL import Image

    big = tmp_path / "big.jpg"
    Image.open(PHOTOS[0]).convert("RGB").resize((2400, 2400), Image.Resampling.BICUBIC).save(big, quality=92)
    args = (big, "-a", "resnet18", "-w", checkpoint("resnet18"), "-f", "jsonl")
    exact = cli(*args).jsonl()[0]["topk"]
    fast = cli(*args, "--fast-decode").jsonl()[0]["topk"]
    assert [t["index"] for t in fast][:3] == [t["index"] for t in exact][:3]
    assert abs(fast[0]["probability"] - exact[0]["probability"]) < 0.02


@pytest.mark.parametrize("argv, message", [
    (["--format", "xml"], "--format xml: use table, json, jsonl or csv"),
    (["--bogus"], "classify has no option --bogus"),
    (["-k", "abc"], "--topk abc: not a whole number"),
])
def test_bad_options_are_usage_errors_not_tracebacks(argv, message, r18, cli):
    res = cli(PHOTOS[0], *r18, *argv)
    assert res.code == 2
    assert message in res.stderr and "Traceback" not in res.stderr
    assert res.stdout == b""


@pytest.mark.parametrize("argv", [[], ["classify"], ["arch"]])
def test_missing_arguments_show_usage_and_exit_2(argv, cli):
    res = cli(*argv)
    assert res.code == 2 and "Traceback" not in res.stderr
    assert "Usage" in res.stdout.decode() + res.stderr


@pytest.mark.timeout(180)
def test_a_reader_that_goes_away_ends_the_run_with_141(photos_dir, r18):
    # `resnet-classify ... | head -c 10`: the pipe closes after the first bytes
    proc = subprocess.Popen([sys.executable, "-m", "resnet_cli", str(photos_dir), *r18, "-f", "jsonl", "-b", "1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err.decode()
    assert b"Traceback" not in err


@pytest.mark.parametrize("where", ["missing_folder", "under_a_file", "a_folder"])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(where, tmp_path, r18, cli):
    (tmp_path / "plain.txt").write_text("a file, not a folder")
    out = {"missing_folder": tmp_path / "no" / "such" / "out.jsonl",
           "under_a_file": tmp_path / "plain.txt" / "out.json",
           "a_folder": tmp_path}[where]
    res = cli(PHOTOS[0], *r18, "-o", out)
    assert res.code == 2 and "--output" in res.stderr and "Traceback" not in res.stderr


def test_a_missing_checkpoint_file_is_reported_as_a_missing_file(cli, tmp_path):
    res = cli(PHOTOS[0], "-a", "resnet18", "-w", "best.ckpt")
    assert res.code == 2 and "checkpoint best.ckpt: no such file" in res.stderr
    # a bare word could be either: both readings are answered, with the names resnet18 publishes
    res = cli(PHOTOS[0], "-a", "resnet18", "-w", "IMAGENET1K_V3")
    assert res.code == 2 and "no such checkpoint file" in res.stderr and "did you mean IMAGENET1K_V1" in res.stderr


def test_recursive_glob_gives_each_file_one_record(photos_dir, r18, cli):
    sub = photos_dir / "sub"
    sub.mkdir()
    shutil.copy(PHOTOS[0], sub / "deep.png")
    recs = cli(str(photos_dir / "**"), "-r", *r18, "-f", "jsonl", "-k", "1").jsonl()
    found = [r["path"] for r in recs]
    assert len(found) == len(set(found)) == len(PHOTOS) + 1


@pytest.mark.timeout(120)
def test_a_result_is_written_while_stdin_is_still_open(r18):
    """A slow producer (`tail -f list | resnet-classify -`) sees each result without waiting for a batch."""
    proc = subprocess.Popen([sys.executable, "-m", "resnet_cli", "-", *r18, "-f", "jsonl", "-k", "1"], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(os.fsencode(PHOTOS[0]) + b"\n/no/such.jpg\n")
        proc.stdin.flush()
        first = json.loads(proc.stdout.readline())  # blocks until the record is out; stdin is still open
        second = json.loads(proc.stdout.readline())
        assert first["path"] == str(PHOTOS[0]) and "topk" in first
        assert second["error"]["type"] == "not_found"
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == 1
