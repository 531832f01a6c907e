"""`resnet-classify audit` on a labelled set with planted problems (tests/audit_set.py): the flipped labels, the
planted near-duplicates and the out-of-distribution images are found; the label issues are cleanlab's and the
cross-fitted probabilities scikit-learn's on the same features; the output is the same to the byte run after
run. The features are extracted once for the module (a shared feature cache), as `train` caches them."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from audit_set import build
from browser import Page

ARGS = ("--arch", "resnet18")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("audit-feature-cache")


@pytest.fixture
def shared_cache(cache, monkeypatch) -> Path:
    """The module's feature cache instead of each test's own (conftest isolates every test's)."""
    monkeypatch.setenv("RESNET_CLASSIFY_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    made = build(tmp_path_factory.mktemp("audit") / "data")
    (made.folder / "b" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    return made


@pytest.fixture(scope="module")
def first_run(made, checkpoint, cache, tmp_path_factory):
    """The audit of the set, run once with an empty feature cache: (exit code, stdout json, -o records, the
    report's path, stdout's bytes, stderr)."""
    from resnet_cli.cli import run
    import io
    import os
    import sys

    out_dir = tmp_path_factory.mktemp("audit-out")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNET_CLASSIFY_CACHE", str(cache))
        mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch-home")))
        buffer = io.BytesIO()
        stdout = io.TextIOWrapper(buffer, encoding="utf-8", write_through=True)
        mp.setattr(sys, "stdout", stdout)
        err = io.StringIO()
        mp.setattr(sys, "stderr", err)
        code = run([os.fspath(a) for a in ("audit", made.folder, *ARGS, "--weights", checkpoint("resnet18"),
                                           "-f", "json", "-o", out_dir / "findings.jsonl",
                                           "--report", out_dir / "audit.html")])
        out = json.loads(buffer.getvalue())
    return (code, out, (out_dir / "findings.jsonl").read_bytes(), out_dir / "audit.html", buffer.getvalue(),
            err.getvalue())


def _rel(made, path: str) -> str:
    return Path(path).relative_to(made.folder).as_posix()


@pytest.mark.timeout(240)
def test_audit_finds_the_flipped_labels_the_planted_duplicates_and_the_odd_images(made, first_run):
    code, out, records, _, _, _ = first_run
    assert code == 1  # the broken file, as classify's exit code
    findings = out["findings"]
    assert [json.loads(line) for line in records.decode().splitlines()] == findings + out["failures"]
    # the broken file is a failure in its place, never a finding
    assert [_rel(made, f["path"]) for f in out["failures"]] == ["b/zz_broken.jpg"]
    assert all(not f["path"].endswith("zz_broken.jpg") for f in findings)
    assert out["summary"]["images"] == len(made.labels) and out["summary"]["failed"] == 1

    # label issues: the wrong labels (the flips and the copies filed under another class) come first
    wrong = {p for p, label in made.labels.items() if p in made.truth and made.truth[p] != label}
    assert set(made.flipped) <= wrong and len(made.flipped) == 10
    issues = [f for f in findings if f["kind"] == "label_issue"]
    top = [_rel(made, f["path"]) for f in issues[:len(wrong)]]
    recall = len(set(top) & wrong) / len(wrong)
    precision = len(set(top) & wrong) / max(len(top), 1)
    print(f"label issues at {len(wrong)} (the wrong labels): recall {recall:.2f}, precision {precision:.2f}; "
          f"flips found {len(set(top) & set(made.flipped))} of {len(made.flipped)}")
    assert recall >= 0.9
    for f in issues:  # each with its suggested label: the class of its source photo, where it has one
        rel = _rel(made, f["path"])
        assert f["given_label"] == made.labels[rel] != f["suggested_label"]
        if rel in wrong:
            assert f["suggested_label"] == made.truth[rel]
    scores = [f["score"] for f in issues]
    assert scores == sorted(scores)  # ranked by self-confidence, lowest first

    # near-duplicates: every planted pair, as a contradiction (their labels differ)
    pairs = {frozenset((_rel(made, f["path"]), _rel(made, f["other_path"]))): f
             for f in findings if f["kind"] == "duplicate"}
    for original, copy in made.duplicates:
        found = pairs[frozenset((original, copy))]
        assert found["reason"] == "contradiction" and found["score"] >= 0.98
        assert found["given_label"] != found["other_label"]
    assert all(f["given_label"] != f["other_label"] for f in pairs.values())
    sims = [f["score"] for f in findings if f["kind"] == "duplicate"]
    assert sims == sorted(sims, reverse=True)

    # outliers: the grey frame and the noise first
    outliers = [_rel(made, f["path"]) for f in findings if f["kind"] == "outlier"]
    assert set(outliers[:2]) == set(made.ood)

    # the order of kinds, and the summary's counts
    kinds = [f["kind"] for f in findings]
    assert kinds == sorted(kinds, key=["label_issue", "duplicate", "outlier"].index)
    summary = out["summary"]
    assert summary["findings"] == {k: kinds.count(k) for k in ("label_issue", "duplicate", "outlier")}
    for name, c in summary["per_class"].items():
        assert c["images"] == sum(1 for p, label in made.labels.items()
                                  if label == name and not p.endswith("zz_broken.jpg"))
        assert c["label_issue"] == sum(1 for f in issues if f["given_label"] == name)
        assert c["duplicate"] == sum(1 for f in pairs.values() if name in (f["given_label"], f["other_label"]))
        assert 0 <= c["noise_rate"] < 0.5


def _features(made, checkpoint):
    """The set's cached features, labels and paths, as the audit read them (the module's cache)."""
    from resnet_cli.analysis import probe
    from resnet_cli.run.job import ModelOptions

    resolved = ModelOptions("resnet18", str(checkpoint("resnet18"))).resolve()
    store = probe.FeatureCache(probe.model_key(resolved, "fp32", "cpu"))
    paths = sorted(p for p in made.labels if not p.endswith("zz_broken.jpg"))
    # DATA's order: class folders by name, files by name within each
    x = np.stack([store.get(probe.file_digest(str(made.folder / p))) for p in paths])
    classes = sorted(set(made.labels.values()))
    y = np.array([classes.index(made.labels[p]) for p in paths])
    return paths, x, y, classes


@pytest.mark.timeout(240)
def test_the_label_issues_are_cleanlabs_on_probabilities_equal_to_scikit_learns(made, first_run, checkpoint,
                                                                                  shared_cache):
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from threadpoolctl import threadpool_limits

    from resnet_cli.analysis import audit

    _, out, _, _, _, _ = first_run
    paths, x, y, classes = _features(made, checkpoint)
    folds = audit.stratified_folds(y, 5, 0)
    p = audit.cross_fit(x, y, len(classes), folds)
    cv = [(np.flatnonzero(folds != f), np.flatnonzero(folds == f)) for f in range(5)]
    with threadpool_limits(1):  # a small problem: BLAS threads only wait for each other on a busy machine
        reference = cross_val_predict(LogisticRegression(C=audit.C, tol=1e-8, max_iter=10_000), x.astype(np.float64),
                                      y, cv=cv, method="predict_proba")
    assert np.abs(p - reference).max() < 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = find_label_issues(y, p, filter_by="prune_by_noise_rate", return_indices_ranked_by="self_confidence",
                                     n_jobs=1)
    issues = [f for f in out["findings"] if f["kind"] == "label_issue"]
    assert [_rel(made, f["path"]) for f in issues] == [paths[i] for i in expected]
    assert [f["score"] for f in issues] == [p[i, y[i]] for i in expected]
    assert [f["suggested_label"] for f in issues] == [classes[p[i].argmax()] for i in expected]


@pytest.mark.timeout(120)
def test_two_runs_write_the_same_bytes_whether_the_feature_cache_was_empty_or_full(made, first_run, checkpoint, cli,
                                                                                   shared_cache, tmp_path):
    """The first run extracted every feature (an empty cache), this one reads them all back: stdout, -o and the
    report are the same to the byte; how the features were had is a note on stderr only."""
    _, _, records, report, stdout, stderr = first_run
    again = cli("audit", made.folder, *ARGS, "--weights", checkpoint("resnet18"), "-f", "json",
                "-o", tmp_path / "again.jsonl", "--report", tmp_path / "again.html")
    assert again.code == 1
    assert f"features: 0 read from the cache, {len(made.labels)} extracted, 1 could not be read" in stderr
    assert f"features: {len(made.labels)} read from the cache, 0 extracted, 1 could not be read" in again.stderr
    assert again.stdout == stdout
    assert (tmp_path / "again.jsonl").read_bytes() == records
    assert (tmp_path / "again.html").read_bytes() == report.read_bytes()


@pytest.mark.timeout(120)
def test_against_reports_leakage_between_the_sets_whatever_their_classes(made, checkpoint, cli, shared_cache,
                                                                         tmp_path):
    """Leakage needs no labels: a validation set whose class DATA has not is audited, its label only copied."""
    other = tmp_path / "val"
    (other / "unseen").mkdir(parents=True)
    leaked = made.duplicates[0][0]
    shutil.copy(made.folder / leaked, other / "unseen" / "leaked.jpg")
    shutil.copy(made.folder / made.ood[0], other / "unseen" / "grey.png")
    result = cli("audit", made.folder, "--against", other, *ARGS, "--weights", checkpoint("resnet18"), "-f", "json")
    assert result.code == 1, result.stderr
    out = json.loads(result.stdout)
    leaks = [f for f in out["findings"] if f.get("reason") == "leakage"]
    assert {(_rel(made, f["path"]), Path(f["other_path"]).name) for f in leaks} >= {
        (leaked, "leaked.jpg"), (made.ood[0], "grey.png")}
    assert all(Path(f["other_path"]).parent.parent == other for f in leaks)
    assert {f["other_label"] for f in leaks} == {"unseen"}
    assert {f["given_label"] for f in leaks} <= set(out["summary"]["classes"]) == {"a", "b", "c"}
    assert out["summary"]["against_images"] == 2


def test_a_class_too_small_for_the_folds_is_a_usage_error_naming_it(cli, tmp_path):
    from checkpoints import PHOTOS

    for label, photos in (("big", PHOTOS[:5]), ("tiny", PHOTOS[5:])):
        (tmp_path / "data" / label).mkdir(parents=True)
        for p in photos:
            shutil.copy(p, tmp_path / "data" / label / p.name)
    result = cli("audit", tmp_path / "data", *ARGS, "--folds", "3")
    assert result.code == 2
    assert "'tiny' (1)" in result.stderr and "'big'" not in result.stderr and "--folds 3" in result.stderr
    assert result.stderr.startswith("resnet-classify: error:") and "Traceback" not in result.stderr


def test_against_the_data_set_itself_is_a_usage_error(cli, tmp_path):
    """Every image would "leak" into itself: the command says what --against is for instead."""
    from checkpoints import PHOTOS

    for label, photos in (("a", PHOTOS[:3]), ("b", PHOTOS[3:])):
        (tmp_path / "data" / label).mkdir(parents=True)
        for p in photos:
            shutil.copy(p, tmp_path / "data" / label / p.name)
    result = cli("audit", tmp_path / "data", *ARGS, "--folds", "2", "--against", str(tmp_path / "data") + "/")
    assert result.code == 2 and "is DATA itself" in result.stderr and "Traceback" not in result.stderr


def test_the_findings_file_is_never_an_input(cli, tmp_path):
    from checkpoints import PHOTOS

    manifest = tmp_path / "data.jsonl"
    manifest.write_text("".join(json.dumps({"path": str(p), "label": str(i % 2)}) + "\n"
                                for i, p in enumerate(PHOTOS)))
    before = manifest.read_bytes()
    result = cli("audit", manifest, *ARGS, "--folds", "2", "-o", manifest)
    assert result.code == 2 and "is an input of this run" in result.stderr
    assert manifest.read_bytes() == before
    result = cli("audit", manifest, *ARGS, "-o", tmp_path / "findings.csv")
    assert result.code == 2 and ".jsonl" in result.stderr


@pytest.mark.timeout(120)
def test_the_report_shows_each_finding_as_a_card_with_filters(browser, made, first_run):  # noqa: F811
    _, out, _, report, _, _ = first_run
    findings = out["findings"]
    page = Page(browser, report)
    try:
        assert page.errors == []
        assert [u for u in page.requests if not u.startswith("data:")] == [page.url]  # nothing from outside
        cards = page.cards()
        assert [(c["path"], c["kind"]) for c in cards] == [(f["path"], f["kind"]) for f in findings] + [
            (f["path"], "failure") for f in out["failures"]]
        for card, f in zip(cards, findings):
            assert card["class"] == f["given_label"] and float(card["score"]) == f["score"]
            assert len(card["imgs"]) == (2 if f["kind"] == "duplicate" else 1)
            assert all(src.startswith("data:image/jpeg;base64,") for src in card["imgs"])
            if f["kind"] == "label_issue":
                assert card["suggested"] == f["suggested_label"]
        page.page.select_option("#kind", "outlier")
        assert [c["path"] for c in page.cards()] == [f["path"] for f in findings if f["kind"] == "outlier"]
        page.page.select_option("#class", "a")
        assert [c["path"] for c in page.cards()] == [f["path"] for f in findings
                                                     if f["kind"] == "outlier" and f["given_label"] == "a"]
        page.page.select_option("#kind", "")
        assert [c["path"] for c in page.cards()] == [f["path"] for f in findings if f["given_label"] == "a"]
        page.page.select_option("#class", "")
        page.page.select_option("#kind", "failure")
        assert [c["path"] for c in page.cards()] == [f["path"] for f in out["failures"]]
        assert "Summary" in page.page.inner_text("#summary") and page.errors == []
    finally:
        page.close()


def test_the_terminal_table_lists_the_summary_and_the_findings(made, first_run, checkpoint, cli, shared_cache):
    _, out, _, _, _, _ = first_run
    result = cli("audit", made.folder, *ARGS, "--weights", checkpoint("resnet18"), "-f", "table")
    assert result.code == 1
    text = result.text
    counts = out["summary"]["findings"]
    assert (f"{counts['label_issue']} label issues, {counts['duplicate']} near-duplicates, "
            f"{counts['outlier']} outliers") in text
    first = out["findings"][0]
    assert Path(first["path"]).name in text and "zz_broken.jpg" in text
