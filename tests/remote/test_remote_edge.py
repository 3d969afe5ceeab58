"""The door's reading of a worker's answer: it is judged by the door's own matcher, and an answer
that does not fit the request exactly is a failure (the door denies), never a guess."""

from __future__ import annotations

import numpy as np
import pytest

from facelock_mqtt.guards.liveness import load_operating_point
from facelock_mqtt.models.bundle import Threshold
from facelock_mqtt.pipeline.match import Matcher
from facelock_mqtt.pipeline.quality import Quality
from facelock_mqtt.remote.edge import EdgeVerifier, RemoteLiveness
from facelock_mqtt.remote.protocol import RemoteFailure

FINGERPRINT, DIGEST = "bundle-fp", "gallery-digest"


class Face:
    def __init__(self, x: float) -> None:
        self.box = np.array([x, 40.0, 60.0, 60.0])
        self.landmarks = np.array([[x + 18, 60], [x + 42, 60], [x + 30, 72], [x + 20, 84], [x + 40, 84]], float)


class Located:
    def __init__(self, x: float = 50.0) -> None:
        self.face = Face(x)
        self.quality = Quality(size_px=60.0, blur=100.0, brightness=120.0, yaw=0.0)


@pytest.fixture
def matcher():
    rng = np.random.default_rng(3)
    templates = rng.normal(size=(3, 128)).astype(np.float32)
    templates /= np.linalg.norm(templates, axis=1, keepdims=True)
    threshold = Threshold(far=1e-6, threshold=0.5, n_impostor=1000)
    return Matcher(templates, ["ann", "ann", "bob"], threshold, 1e-6, 0.05)


def edge() -> EdgeVerifier:
    return EdgeVerifier(client=None, engine=None, fingerprint=FINGERPRINT, auto=False)


def pending(count: int) -> list:
    return [(np.zeros((200, 200, 3), np.uint8), Located(), float(i)) for i in range(count)]


def answer(scores, liveness=None, **changes) -> dict:
    return {"ok": True, "bundle": FINGERPRINT, "gallery": DIGEST, "scores": scores, "liveness": liveness, **changes}


def test_worker_scores_are_judged_like_the_doors_own(matcher):
    probe = matcher.templates[2] * 0.9 + matcher.templates[0] * 0.1
    probe /= np.linalg.norm(probe)
    scores = [float(v) for v in matcher.templates @ probe]
    found = edge()._read(answer([scores]), DIGEST, pending(1), matcher, None)
    assert found[0].match == matcher.match(probe, Located().quality)
    assert found[0].match.person == "bob" and found[0].match.accepted


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        pytest.param(answer([[0.9, 0.9, 0.1]], gallery="other"), "another gallery", id="gallery version"),
        pytest.param(answer([[0.9, 0.9, 0.1]], bundle="other"), "another gallery or bundle", id="bundle version"),
        pytest.param(answer([[0.9, 0.9, 0.1], [0.9, 0.9, 0.1]]), "do not fit", id="more rows than crops"),
        pytest.param(answer([[0.9, 0.9]]), "2 templates, 3 expected", id="a template missing"),
        pytest.param(answer([[0.9, 0.9, float("nan")]]), "not a cosine", id="NaN"),
        pytest.param(answer([[0.9, 7.0, 0.1]]), "not a cosine", id="out of range"),
        pytest.param(answer([[0.9, "0.9", 0.1]]), "not a cosine", id="a string"),
        pytest.param(answer(None), "do not fit", id="no scores"),
    ],
)
def test_an_answer_that_does_not_fit_fails(matcher, bad, why):
    with pytest.raises(RemoteFailure, match=why):
        edge()._read(bad, DIGEST, pending(1), matcher, None)


def test_liveness_must_come_with_the_answer_when_the_door_wants_it(matcher):
    liveness = RemoteLiveness(load_operating_point())
    row = [[0.1, 0.1, 0.1]]
    with pytest.raises(RemoteFailure, match="no liveness scores"):
        edge()._read(answer(row, None), DIGEST, pending(1), matcher, liveness)
    with pytest.raises(RemoteFailure, match="not a probability"):
        edge()._read(answer(row, [[0.5, 1.5]]), DIGEST, pending(1), matcher, liveness)


def test_a_frame_the_workers_did_not_score_is_judged_a_spoof(matcher):
    liveness = RemoteLiveness(load_operating_point())
    frames = pending(3)
    edge()._read(answer([[0.1, 0.1, 0.1]] * 3, [[0.99, 0.99], None, [0.99, 0.99]]), DIGEST, frames, matcher, liveness)
    assert liveness.cnn_score(frames[0][0], frames[0][1].face.box) == pytest.approx(0.99)
    verdict = liveness.assess([(image, result.face) for image, result, _ in frames])
    assert not verdict.live and "no liveness score from a worker" in verdict.reasons[0], verdict
    other = np.zeros((200, 200, 3), np.uint8)  # equal pixels, another frame: never takes a score it was not given
    verdict = liveness.assess([(other, frames[0][1].face), (frames[2][0], frames[2][1].face)])
    assert not verdict.live
