"""The shared embedder's opportunistic batching (pipeline/batcher.py), on real LFW crops and the
real SFace graph.

Overlap is made certain, not hoped for: the first run is held open (the real embedder, called
once an event is set) while other callers queue, so run counts can be asserted exactly. No test
measures time: a lone face is shown to run at once by where and how it runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_door import build, play  # noqa: F401  (the real door fixture: recognizer, bridge, Mosquitto)

from facelock_mqtt.errors import BundleError
from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.models.bundle import load_bundle
from facelock_mqtt.pipeline.batcher import Batcher
from facelock_mqtt.pipeline.embed import Embedder
from facelock_mqtt.pipeline.engine import FaceEngine
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.settings import ModelSettings, QualitySettings

SAME = 0.99999  # cosine of a batched and an unbatched embedding of one crop (fp32 rounding only)
WAIT_S = 30.0


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory):
    return default_bundle(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def embedder(bundle) -> Embedder:
    return Embedder(bundle, threads=1)


@pytest.fixture(scope="module")
def crops(shared_data: Path) -> list[np.ndarray]:
    """Twelve aligned crops of different people (different vectors, so a mix-up shows)."""
    folders = sorted(p for p in (shared_data / "lfw_aligned_112").iterdir() if p.is_dir())[:12]
    return [read_image(sorted(folder.glob("*.jpg"))[0]) for folder in folders]


@pytest.fixture(scope="module")
def alone(embedder: Embedder, crops: list[np.ndarray]) -> np.ndarray:
    """Each crop embedded on its own, without the batcher."""
    return np.stack([embedder.embed([crop])[0] for crop in crops])


class HeldRun:
    """The real embedder, whose first run waits for `release` once it has started."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.started, self.release = threading.Event(), threading.Event()
        self.threads: list[int] = []

    def __call__(self, batch: list[np.ndarray]) -> np.ndarray:
        self.threads.append(threading.get_ident())
        if not self.started.is_set():
            self.started.set()
            assert self.release.wait(WAIT_S)
        return self.embedder.embed(batch)


def call_all(batcher: Batcher, crops: list[np.ndarray]) -> tuple[list[threading.Thread], dict[int, object]]:
    """Start one thread per crop calling `batcher.embed`; results (vector or exception) by index."""
    results: dict[int, object] = {}

    def call(index: int) -> None:
        try:
            results[index] = batcher.embed(crops[index])
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(crops))]
    for thread in threads:
        thread.start()
    return threads, results


def wait_for(condition: Callable[[], bool]) -> None:
    event = threading.Event()
    for _ in range(int(WAIT_S / 0.01)):
        if condition():
            return
        event.wait(0.01)
    raise AssertionError("the callers did not queue")


def queue_behind_a_held_run(held: HeldRun, batcher: Batcher, first: np.ndarray, others: list[np.ndarray]):
    """One caller's run in progress (held), `others` queued behind it; then let it go, join all."""
    first_threads, first_result = call_all(batcher, [first])
    assert held.started.wait(WAIT_S)
    threads, results = call_all(batcher, others)
    wait_for(lambda: batcher.waiting == len(others))
    held.release.set()
    for thread in first_threads + threads:
        thread.join(WAIT_S)
    return first_result[0], results


def assert_own_vector(vector: object, index: int, alone: np.ndarray) -> None:
    assert isinstance(vector, np.ndarray), vector
    scores = alone @ vector
    assert scores[index] >= SAME
    assert int(np.argmax(scores)) == index  # its own face, not another caller's


def test_a_lone_face_runs_at_once_in_its_callers_thread(embedder, crops, alone):
    """No timer and no worker thread: the caller finding the embedder free runs its face itself."""
    held = HeldRun(embedder)
    held.started.set()  # nothing to hold: the run goes straight through
    batcher = Batcher(held, max_batch=8)
    threads_before = threading.active_count()
    vector = batcher.embed(crops[0])
    assert held.threads == [threading.get_ident()]
    assert threading.active_count() == threads_before
    assert batcher.stats.runs == 1 and batcher.stats.sizes == {1: 1} and batcher.waiting == 0
    assert_own_vector(vector, 0, alone)


def assert_everyone_got_their_own(first: object, results: dict[int, object], alone: np.ndarray) -> None:
    """The held face (crop 0) and each queued one (crop index + 1) got its own vector."""
    assert_own_vector(first, 0, alone)
    for index, vector in results.items():
        assert_own_vector(vector, index + 1, alone)


def test_faces_that_queue_during_a_run_share_the_next_run(embedder, crops, alone):
    held = HeldRun(embedder)
    batcher = Batcher(held, max_batch=8)
    first, results = queue_behind_a_held_run(held, batcher, crops[0], crops[1:6])
    assert_everyone_got_their_own(first, results, alone)
    stats = batcher.stats
    assert stats.runs == 2 and stats.sizes == {1: 1, 5: 1} and stats.faces == 6 and stats.failed_runs == 0


def test_max_batch_bounds_every_run(embedder, crops, alone):
    held = HeldRun(embedder)
    batcher = Batcher(held, max_batch=3)
    first, results = queue_behind_a_held_run(held, batcher, crops[0], crops[1:8])
    assert_everyone_got_their_own(first, results, alone)
    assert batcher.stats.sizes == {1: 2, 3: 2}  # the held face, then 7 queued in runs of 3, 3, 1
    assert batcher.stats.largest == 3


def test_a_failing_run_fails_every_caller_of_its_batch_and_only_them(embedder, crops, alone):
    """A crop of the wrong size makes the real run fail (the crops cannot be stacked)."""
    held = HeldRun(embedder)
    batcher = Batcher(held, max_batch=8)
    wrong = np.zeros((100, 100, 3), np.uint8)
    first, results = queue_behind_a_held_run(held, batcher, crops[0], [crops[1], wrong])
    assert_own_vector(first, 0, alone)  # its run came before the failing one
    assert isinstance(results[0], ValueError) and results[0] is results[1]  # that run's exception, for both
    assert batcher.stats.failed_runs == 1 and batcher.stats.runs == 2
    assert_own_vector(batcher.embed(crops[2]), 2, alone)  # the embedder is free again


def test_many_threads_at_once_each_get_their_own_vector(embedder, crops, alone):
    batcher = Batcher(embedder.embed, max_batch=8)
    results: dict[tuple[int, int], tuple[int, np.ndarray]] = {}

    def door(number: int) -> None:
        for round_ in range(4):
            index = (number + round_) % len(crops)
            results[number, round_] = (index, batcher.embed(crops[index]))

    threads = [threading.Thread(target=door, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert len(results) == 32
    for index, vector in results.values():
        assert_own_vector(vector, index, alone)
    stats = batcher.stats
    assert stats.faces == 32 and stats.runs <= 32 and stats.largest <= 8
    print(f"32 faces from 8 threads: {stats.runs} runs, sizes {stats.sizes}")


def test_max_batch_below_one_is_refused(embedder):
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(embedder.embed, max_batch=0)


def test_the_engine_batches_only_when_asked_and_the_graph_allows_it(bundle, shared_models, crops):
    batched = FaceEngine(bundle, ModelSettings(threads=1, max_batch=8), QualitySettings())
    assert batched.batcher is not None and batched.batcher.max_batch == 8
    unbatched = FaceEngine(bundle, ModelSettings(threads=1), QualitySettings())
    assert ModelSettings().max_batch == 1 and unbatched.batcher is None  # the default: every face its own run
    assert float(batched.embed_one(crops[3]) @ unbatched.embed_one(crops[3])) >= SAME
    assert batched.batcher.stats.runs == 1
    pack = FaceEngine(load_bundle(shared_models / "pack_like"), ModelSettings(threads=1, max_batch=8), QualitySettings())
    assert pack.batcher is None  # exported with batch 1: every face is its own run anyway


def test_a_failing_embedding_run_keeps_the_door_locked(build):  # noqa: F811
    make, relay, frames, _ = build
    door = make()

    def broken(batch: list[np.ndarray]) -> np.ndarray:
        raise BundleError("embedder returned a zero or non-finite vector")

    door.recognizer.engine.batcher = Batcher(broken, max_batch=8)  # every run of the shared embedder fails
    play(door, frames)
    assert door.stats.errors >= 1 and door.recognizer.engine.batcher.stats.failed_runs >= 1
    assert "unlock" not in relay.calls and door.lock.state == "LOCKED"
    assert not [e for e in door.events if e["event_type"] == "recognized"]
