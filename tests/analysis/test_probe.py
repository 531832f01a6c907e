"""probe.py: the feature cache, its keys, and the fitted head against scikit-learn (no network: features are
synthetic)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from resnet_cli.analysis import probe
from resnet_cli.run.job import ModelOptions
from resnet_cli.models.resolve import Resolved

PUBLISHED = ModelOptions("resnet18").resolve()


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The fits here are 90 x 4: threads buy nothing, and on a loaded machine their hand-offs made one fit take
    seconds instead of milliseconds."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- the cache -------------------------------------------------------------------------------------------------

def test_a_vector_put_is_got_back_as_float32():
    cache = probe.FeatureCache("k")
    vector = np.linspace(-1, 1, 512)  # float64 in: stored as the float32 embed writes
    cache.put("ab" + "0" * 62, vector)
    got = cache.get("ab" + "0" * 62)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, vector.astype(np.float32))
    assert cache.get("cd" + "0" * 62) is None  # never put


def test_a_vector_put_again_replaces_the_first_and_leaves_no_temporary_file():
    cache = probe.FeatureCache("k")
    digest = "ff" * 32
    cache.put(digest, np.zeros(4))
    cache.put(digest, np.ones(4))
    np.testing.assert_array_equal(cache.get(digest), np.ones(4, np.float32))
    assert [p.name for p in cache.folder.rglob("*") if p.is_file()] == [f"{digest}.npy"]


def test_the_cache_lives_where_the_environment_says(monkeypatch, tmp_path):
    monkeypatch.setenv("RESNET_CLASSIFY_CACHE", str(tmp_path / "mine"))
    assert probe.cache_root() == tmp_path / "mine"
    assert probe.FeatureCache("key1").folder == tmp_path / "mine" / "features" / "key1"
    monkeypatch.delenv("RESNET_CLASSIFY_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert probe.cache_root() == tmp_path / "xdg" / "resnet-classify"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert probe.cache_root() == tmp_path / "home" / ".cache" / "resnet-classify"


def _valid_npy_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.arange(100, dtype=np.float32))
    return buf.getvalue()


@pytest.mark.parametrize("content", [
    b"",  # a file left empty (a full disk, a crash)
    b"not numpy at all",
    _valid_npy_bytes()[:100],  # torn in the middle of the data
    _valid_npy_bytes()[:20],  # torn in the header
], ids=["empty", "garbage", "torn-data", "torn-header"])
def test_a_corrupt_cache_file_is_a_miss_not_an_error(content):
    cache = probe.FeatureCache("k")
    digest = "12" * 32
    cache.put(digest, np.ones(3))
    cache._file(digest).write_bytes(content)
    assert cache.get(digest) is None
    cache.put(digest, np.full(3, 2.0))  # and it is simply written again
    np.testing.assert_array_equal(cache.get(digest), np.full(3, 2.0, np.float32))


def test_a_pickle_in_the_cache_is_never_loaded(tmp_path):
    import pickle

    cache = probe.FeatureCache("k")
    digest = "34" * 32
    cache.put(digest, np.ones(3))
    cache._file(digest).write_bytes(pickle.dumps(np.ones(3)))
    assert cache.get(digest) is None


def test_the_caches_of_two_models_are_apart():
    a, b = probe.FeatureCache("model-a"), probe.FeatureCache("model-b")
    digest = "56" * 32
    a.put(digest, np.ones(3))
    assert b.get(digest) is None
    assert a.get(digest) is not None


def test_the_model_key_changes_with_everything_the_features_depend_on():
    base = probe.model_key(PUBLISHED, "fp32", "cpu")
    assert probe.model_key(ModelOptions("resnet18").resolve(), "fp32", "cpu") == base  # a pure function
    others = [
        probe.model_key(PUBLISHED, "bf16", "cpu"),
        probe.model_key(PUBLISHED, "fp32", "cuda"),
        probe.model_key(ModelOptions("resnet34").resolve(), "fp32", "cpu"),
        probe.model_key(ModelOptions("resnet18", crop=160).resolve(), "fp32", "cpu"),
        probe.model_key(ModelOptions("resnet18", resize=300, crop=224).resolve(), "fp32", "cpu"),
    ]
    assert len({base, *others}) == 1 + len(others)
    assert len(base) == 32 and int(base, 16) >= 0


def test_a_checkpoints_key_is_its_content_not_its_name(tmp_path):
    def key(path: Path) -> str:
        return probe.model_key(Resolved(PUBLISHED.arch, None, str(path), PUBLISHED.preprocess), "fp32", "cpu")

    a, b, c = tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "c.pth"
    a.write_bytes(b"weights one")
    b.write_bytes(b"weights one")
    c.write_bytes(b"weights two")
    assert key(a) == key(b) != key(c)


@pytest.mark.parametrize("size, chunk", [(0, 1 << 20), (10, 3), (4096, 1024), (100_001, 1 << 12)])
def test_file_digest_is_the_sha256_of_the_whole_file(tmp_path, size, chunk):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert probe.file_digest(str(path), chunk=chunk) == hashlib.sha256(data).hexdigest()


# --- the head --------------------------------------------------------------------------------------------------

def blobs(seed: int, per_class: int = 30):
    """Three Gaussian clusters in 4-D, their centres 8.5 standard deviations apart: separable."""
    rng = np.random.default_rng(seed)
    centres = 6.0 * np.eye(3, 4)
    y = np.repeat(np.arange(3), per_class)
    return centres[y] + rng.normal(size=(len(y), 4)), y


@pytest.mark.parametrize("c", [0.1, 10.0])
def test_the_head_is_scikit_learns_logistic_regression(c):
    from sklearn.linear_model import LogisticRegression

    x, y = blobs(0)
    w, b = probe.fit(x, y, 3, c, max_iter=200)
    sk = LogisticRegression(C=c, tol=1e-12, max_iter=10_000).fit(x, y)
    x_test, y_test = blobs(1)
    # Both minimise the same strictly convex objective (C * summed cross-entropy + |W|^2 / 2, bias free),
    # each to its solver's tolerance; the probabilities (unique even where the bias is not, softmax being shift
    # invariant) agreed to 3e-7 for C = 0.1 and 10 when this was written. 1e-5 leaves room for another BLAS or
    # CPU without letting a different objective pass (C scaled by the number of samples, or a penalised bias,
    # moves them by 1e-2 and more).
    np.testing.assert_allclose(probe.predict_proba(x_test, w, b), sk.predict_proba(x_test), rtol=0, atol=1e-5)
    np.testing.assert_allclose(w, sk.coef_, rtol=0, atol=1e-4)
    assert probe.accuracy(x_test, y_test, w, b) == sk.score(x_test, y_test)
    assert probe.accuracy(x, y, w, b) == 1.0 and probe.accuracy(x_test, y_test, w, b) >= 0.97


def test_two_fits_are_equal_to_the_byte():
    x, y = blobs(2)
    w1, b1 = probe.fit(x, y, 3, 1.0)
    w2, b2 = probe.fit(x.copy(), y.copy(), 3, 1.0)
    assert w1.dtype == np.float64 and w1.shape == (3, 4) and b1.shape == (3,)
    assert w1.tobytes() == w2.tobytes() and b1.tobytes() == b2.tobytes()


def test_predict_proba_is_a_softmax_that_does_not_overflow():
    w = np.array([[1000.0, 0.0], [0.0, 1000.0]])
    p = probe.predict_proba(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), w, np.zeros(2))
    np.testing.assert_allclose(p, [[1, 0], [0, 1], [0.5, 0.5]], atol=1e-12)
    assert probe.accuracy(np.zeros((0, 2)), np.zeros(0, int), w, np.zeros(2)) is None


def test_choose_c_keeps_the_best_on_validation_and_is_c_1_without_it():
    x, y = blobs(3, per_class=20)
    xv, yv = blobs(4, per_class=10)
    calls = []
    chosen = probe.choose_c(x, y, xv, yv, 3, 100, progress=lambda: calls.append(1))
    assert [t["C"] for t in chosen["tried"]] == list(probe.GRID) and len(calls) == len(probe.GRID)
    # best accuracy, then lowest log-loss, then the first (strongest regularisation) of equals
    best = max(chosen["tried"], key=lambda t: (t["val_accuracy"], -t["val_log_loss"]))
    assert chosen["C"] == best["C"]
    w, b = probe.fit(x, y, 3, chosen["C"], 100)
    assert chosen["w"].tobytes() == w.tobytes() and chosen["b"].tobytes() == b.tobytes()
    alone = probe.choose_c(x, y, xv[:0], yv[:0], 3, 100)
    assert alone["C"] == 1.0 and alone["tried"] == []
