"""pipeline.run_task and pipeline.Decoder with a fake predictor and fake sources: no model, no image decoding.

Each fake image is filled with one byte value, its "id"; the fake predictor answers from the pixels alone (the
mean of each image), so every record says which image it was computed from."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from resnet_cli.run import pipeline, tasks
from resnet_cli.core.errors import NOT_FOUND, InputError
from resnet_cli.run.pipeline import IDLE, Decoder, Prepared, run_task
from resnet_cli.core.records import Embedding, Failure, Success, View
from resnet_cli.models.resolve import resolve
from resnet_cli.inputs.sources import Source

WEIGHTS = resolve("resnet18", crop=4)  # tiny crops: 4x4x3 bytes an image
CROP = WEIGHTS.preprocess.crop
NUM_CLASSES = 10
LABELS = tuple(f"class{i}" for i in range(NUM_CLASSES))


class FakePredictor:
    """inference.Predictor's interface, answering from each image's mean pixel value `m`: class m % 10 first,
    then the next ones; the embedding is [m, 2m, 3m]. Records every batch it is given."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []  # the image ids of each call

    def _ids(self, pixels) -> torch.Tensor:
        assert pixels.dtype == torch.uint8 and tuple(pixels.shape[1:]) == (CROP, CROP, 3)
        ids = pixels.reshape(len(pixels), -1).double().mean(dim=1).round().long()
        self.batches.append(ids.tolist())
        return ids

    def classify(self, pixels, topk, restrict, tta):
        ids = self._ids(pixels)
        ranks = torch.arange(topk)
        indices = (ids[:, None] + ranks[None, :]) % NUM_CLASSES
        probs = (1.0 / (ranks + 2.0)).float().expand(len(ids), topk).contiguous()
        return probs, indices

    def embed(self, pixels):
        ids = self._ids(pixels).float()
        return torch.stack([ids, 2 * ids, 3 * ids], dim=1)


def ok(i: int) -> Prepared:
    return Prepared(f"img{i}.jpg", bytes([i]) * (CROP * CROP * 3))


def bad(i: int) -> Prepared:
    return Prepared(f"img{i}.jpg", None, InputError(NOT_FOUND, f"img{i}.jpg: no such file"))


class Feed:
    """An iterable of decoded items that remembers how many the consumer has pulled."""

    def __init__(self, items, on_pull=None) -> None:
        self.items, self.pulled, self.on_pull = list(items), 0, on_pull

    def __iter__(self):
        for item in self.items:
            self.pulled += 1
            if self.on_pull:
                self.on_pull(self.pulled)
            yield item


def run(items, task=None, *, batch_size=8, stop=None, predictor=None):
    predictor = predictor or FakePredictor()
    task = (task or tasks.Classify(topk=3)).bind(NUM_CLASSES)
    return run_task(items, predictor, task, weights=WEIGHTS, labels=LABELS, batch_size=batch_size, stop=stop)


def test_one_record_per_input_in_input_order_each_computed_from_its_own_pixels():
    predictor = FakePredictor()
    items = [ok(i) for i in range(1, 20)]
    records = list(run(items, batch_size=4, predictor=predictor))
    assert [r.path for r in records] == [p.path for p in items]
    for i, r in enumerate(records, start=1):
        assert isinstance(r, Success)
        assert [p.index for p in r.topk] == [i % 10, (i + 1) % 10, (i + 2) % 10]
        assert [p.label for p in r.topk] == [LABELS[p.index] for p in r.topk]
        assert [p.rank for p in r.topk] == [1, 2, 3]
        assert (r.arch, r.weights, r.resize, r.crop) == ("resnet18", WEIGHTS.name, WEIGHTS.preprocess.resize, CROP)
    # full batches of 4, the rest in a last one
    assert [len(b) for b in predictor.batches] == [4, 4, 4, 4, 3]


def test_failures_keep_their_places_and_the_task_computes_only_the_successful_rows():
    predictor = FakePredictor()
    items = [ok(1), bad(2), ok(3), bad(4), bad(5), ok(6)]
    records = list(run(items, batch_size=8, predictor=predictor))
    assert [r.path for r in records] == [p.path for p in items]
    assert [type(r) for r in records] == [Success, Failure, Success, Failure, Failure, Success]
    assert records[1] == Failure("img2.jpg", NOT_FOUND, "img2.jpg: no such file")
    assert [r.topk[0].index for r in records if r.ok] == [1, 3, 6]
    assert predictor.batches == [[1, 3, 6]]  # one forward pass, the failed inputs never in it


def test_a_batch_of_failures_only_never_reaches_the_predictor():
    predictor = FakePredictor()
    records = list(run([bad(1), bad(2), bad(3)], predictor=predictor))
    assert [r.path for r in records] == ["img1.jpg", "img2.jpg", "img3.jpg"]
    assert all(isinstance(r, Failure) for r in records)
    assert predictor.batches == []


def test_a_failure_nothing_precedes_is_emitted_before_the_next_input_is_pulled():
    feed = Feed([bad(1), bad(2), ok(3), bad(4), ok(5)])
    stream = run(feed, batch_size=8)
    first = next(stream)
    assert first.path == "img1.jpg" and feed.pulled == 1
    second = next(stream)
    assert second.path == "img2.jpg" and feed.pulled == 2
    # a failure after a pending success waits for that success's batch
    rest = list(stream)
    assert [r.path for r in rest] == ["img3.jpg", "img4.jpg", "img5.jpg"]


def test_a_full_batch_is_emitted_before_the_next_input_is_pulled():
    feed = Feed([ok(i) for i in range(1, 8)])
    stream = run(feed, batch_size=3)
    assert next(stream).path == "img1.jpg"
    assert feed.pulled == 3  # the batch filled on the third input; nothing more was read to emit it


def test_a_partial_batch_is_flushed_when_the_decoder_is_idle():
    predictor = FakePredictor()
    feed = Feed([ok(1), bad(2), ok(3), IDLE, ok(4), IDLE, IDLE, ok(5)])
    stream = run(feed, batch_size=8, predictor=predictor)
    assert [next(stream).path for _ in range(3)] == ["img1.jpg", "img2.jpg", "img3.jpg"]
    assert feed.pulled == 4  # up to the first IDLE, not beyond
    assert next(stream).path == "img4.jpg" and feed.pulled == 6
    assert [r.path for r in stream] == ["img5.jpg"]
    assert predictor.batches == [[1, 3], [4], [5]]  # an IDLE with nothing pending computes nothing


def test_idle_with_only_failures_pending_does_not_call_the_predictor():
    predictor = FakePredictor()
    records = list(run([ok(1), IDLE, bad(2), IDLE, ok(3)], predictor=predictor))
    assert [r.path for r in records] == ["img1.jpg", "img2.jpg", "img3.jpg"]
    assert predictor.batches == [[1], [3]]


@pytest.mark.parametrize("stop_at", [1, 3, 5])
def test_stop_ends_the_stream_after_the_batch_being_gathered(stop_at):
    stop = threading.Event()
    predictor = FakePredictor()
    feed = Feed([ok(i) for i in range(1, 11)], on_pull=lambda n: stop.set() if n == stop_at else None)
    records = list(run(feed, batch_size=2, stop=stop, predictor=predictor))
    # the input pulled when stop was set is in the last batch; nothing after it is read or classified
    assert [r.path for r in records] == [f"img{i}.jpg" for i in range(1, stop_at + 1)]
    assert feed.pulled == stop_at
    assert sum(len(b) for b in predictor.batches) == stop_at


def test_embed_gives_embedding_records_and_classify_gives_predictions():
    items = [ok(1), bad(2), ok(7)]
    embedded = list(run(items, tasks.Embed()))
    assert [type(r) for r in embedded] == [Embedding, Failure, Embedding]
    assert embedded[0].vector.tolist() == [1.0, 2.0, 3.0] and embedded[2].vector.tolist() == [7.0, 14.0, 21.0]
    assert embedded[0].to_dict() == {"path": "img1.jpg", "arch": "resnet18", "weights": WEIGHTS.name,
                                     "embedding": [1.0, 2.0, 3.0]}
    classified = list(run(items, tasks.Classify()))
    assert [type(r) for r in classified] == [Success, Failure, Success]
    assert len(classified[0].topk) == 5  # the default top-k, bound to the model's 10 classes
    assert embedded[1] == classified[1]  # a failure is the same record whatever the task


def test_classify_passes_its_options_to_the_predictor():
    seen = []

    class Recording(FakePredictor):
        def classify(self, pixels, topk, restrict, tta):
            seen.append((topk, restrict, tta))
            return super().classify(pixels, topk, restrict, tta)

    list(run([ok(1)], tasks.Classify(topk=2, restrict=(5, 1, 3), tta=True), predictor=Recording()))
    assert seen == [(2, (1, 3, 5), True)]


def test_a_success_keeps_the_picture_the_decoder_kept():
    view = View(image=object(), box=(0.0, 0.0, 4.0, 4.0))
    item = Prepared("img1.jpg", bytes([1]) * (CROP * CROP * 3), view=view)
    [record] = run([item])
    assert record.view is view


# --- Decoder ---------------------------------------------------------------------------------------------------

class FakePrepare:
    """Stands in for pipeline.prepare and counts the decodes started and running at once. A path in `blocked`
    decodes once `release` is set; a path in `waits_for` once the decode of the path it names has finished
    (so a later input is ready before an earlier one, whatever the machine's load)."""

    def __init__(self, blocked=(), waits_for=None) -> None:
        self.blocked, self.waits_for = set(blocked), waits_for or {}
        self.release = threading.Event()
        self.done: dict[str, threading.Event] = {}
        self.lock = threading.Lock()
        self.started = self.running = self.max_running = 0
        self.finished: list[str] = []

    def _done(self, path: str) -> threading.Event:
        with self.lock:
            return self.done.setdefault(path, threading.Event())

    def __call__(self, source, pre, fast_decode=False, network=None, view_size=None) -> Prepared:
        with self.lock:
            self.started += 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if source.path in self.blocked:
                self.release.wait(10)
            if source.path in self.waits_for:
                assert self._done(self.waits_for[source.path]).wait(10)
            return Prepared(source.path, source.path.encode())
        finally:
            with self.lock:
                self.running -= 1
                self.finished.append(source.path)
            self._done(source.path).set()


def sources(n: int) -> list[Source]:
    return [Source(f"s{i:02d}") for i in range(n)]


def items_of(decoder) -> list:
    return [item for item in decoder if item is not IDLE]


def wait_until(condition, timeout=5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


@pytest.mark.timeout(30)
def test_the_decoder_yields_in_input_order_when_early_sources_are_slow(monkeypatch):
    fake = FakePrepare(waits_for={"s00": "s05", "s01": "s04", "s06": "s09"})
    monkeypatch.setattr(pipeline, "prepare", fake)
    decoder = Decoder(sources(12), WEIGHTS.preprocess, workers=4, window=8, idle_s=0.02)
    try:
        out = items_of(decoder)
    finally:
        decoder.close()
    assert fake.finished.index("s05") < fake.finished.index("s00")  # decoded out of order...
    assert [p.path for p in out] == [s.path for s in sources(12)]  # ...yielded in order
    assert fake.max_running > 1


@pytest.mark.timeout(30)
def test_the_decoder_yields_idle_while_the_next_input_is_not_ready(monkeypatch):
    fake = FakePrepare(blocked={"s00"})
    monkeypatch.setattr(pipeline, "prepare", fake)
    decoder = Decoder(sources(2), WEIGHTS.preprocess, workers=2, window=4, idle_s=0.02)
    out = []
    try:
        for item in decoder:
            out.append(item)
            if item is IDLE:
                fake.release.set()  # IDLE came while s00 could not be ready: now let it finish
    finally:
        fake.release.set()
        decoder.close()
    assert out[0] is IDLE  # a slow first input: IDLE cues a flush instead of blocking the consumer
    assert [p.path for p in out if p is not IDLE] == ["s00", "s01"]


@pytest.mark.timeout(30)
def test_the_window_bounds_how_many_inputs_are_decoded_ahead_of_the_consumer(monkeypatch):
    fake = FakePrepare()
    monkeypatch.setattr(pipeline, "prepare", fake)
    window = 5
    decoder = Decoder(sources(30), WEIGHTS.preprocess, workers=3, window=window, idle_s=0.02)
    try:
        # nobody consumes: exactly `window` decodes start, and no more however long we wait
        assert wait_until(lambda: fake.started == window)
        time.sleep(0.3)
        assert fake.started == window
        taken, outstanding = [], []
        for item in decoder:
            if item is IDLE:
                continue
            taken.append(item.path)
            time.sleep(0.01)  # a slow consumer: the decoder must not run away
            outstanding.append(fake.started - len(taken))
        assert taken == [s.path for s in sources(30)]
        assert max(outstanding) <= window
    finally:
        decoder.close()


@pytest.mark.timeout(30)
def test_taking_one_input_lets_exactly_one_more_decode_start(monkeypatch):
    fake = FakePrepare()
    monkeypatch.setattr(pipeline, "prepare", fake)
    decoder = Decoder(sources(10), WEIGHTS.preprocess, workers=2, window=3, idle_s=0.02)
    try:
        it = iter(decoder)
        assert wait_until(lambda: fake.started == 3)
        assert next(x for x in it if x is not IDLE).path == "s00"
        assert wait_until(lambda: fake.started == 4)
        time.sleep(0.2)
        assert fake.started == 4
    finally:
        decoder.close()


@pytest.mark.timeout(30)
def test_stop_ends_the_decoder_at_the_first_input_not_decoded_without_waiting_for_it(monkeypatch):
    fake = FakePrepare(blocked={"s02"})
    monkeypatch.setattr(pipeline, "prepare", fake)
    stop = threading.Event()
    decoder = Decoder(sources(10), WEIGHTS.preprocess, workers=2, window=6, stop=stop, idle_s=0.02)
    try:
        got = []
        t0 = time.monotonic()
        for item in decoder:
            if item is IDLE:
                if len(got) == 2:
                    stop.set()  # Ctrl-C while s02 is still decoding
                continue
            got.append(item.path)
        elapsed = time.monotonic() - t0
        assert got == ["s00", "s01"]  # a prefix of the inputs: no gap, s03.. left for --resume
        assert elapsed < 5  # it did not wait for the blocked decode (10 s)
    finally:
        fake.release.set()
        decoder.close()


@pytest.mark.timeout(30)
def test_decoder_and_run_task_together_give_every_record_in_order(monkeypatch):
    def fake_prepare(source, pre, fast_decode=False, network=None, view_size=None):
        i = int(source.path[1:])
        time.sleep(0.05 if i % 4 == 0 else 0)
        if i % 3 == 0:
            return Prepared(source.path, None, InputError(NOT_FOUND, "gone"))
        return Prepared(source.path, bytes([i]) * (CROP * CROP * 3))

    monkeypatch.setattr(pipeline, "prepare", fake_prepare)
    decoder = Decoder(sources(20), WEIGHTS.preprocess, workers=3, window=6, idle_s=0.01)
    try:
        records = list(run(decoder, batch_size=4))
    finally:
        decoder.close()
    assert [r.path for r in records] == [s.path for s in sources(20)]
    for i, r in enumerate(records):
        assert r.ok == (i % 3 != 0)
        if r.ok:
            assert r.topk[0].index == i % 10
