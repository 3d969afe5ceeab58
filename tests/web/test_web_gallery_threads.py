"""The panel shares the service's gallery connection with the door threads: a door must never
match against templates of an enrollment that has not committed (and may roll back)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from facelock_mqtt.storage.gallery import Gallery


def test_a_door_never_sees_an_uncommitted_enrollment(tmp_path):
    gallery = Gallery(tmp_path / "gallery.db")
    inside, release, seen = threading.Event(), threading.Event(), []

    def failing_enrollment() -> None:
        with pytest.raises(RuntimeError), gallery._transaction() as db:
            db.execute("INSERT INTO people (name, created) VALUES ('mallory', 0)")
            db.execute("INSERT INTO samples (person_id, crop, source, created) VALUES (1, x'00', 'p', 0)")
            db.execute("INSERT INTO templates VALUES (1, 'fp', ?)", (np.ones(4, np.float32).tobytes(),))
            inside.set()
            release.wait(5)
            raise RuntimeError("the enrollment fails after its inserts")  # rolled back

    writer = threading.Thread(target=failing_enrollment)
    writer.start()
    assert inside.wait(5)
    door = threading.Thread(target=lambda: seen.append(gallery.templates("fp")[1]))
    door.start()
    door.join(0.3)
    assert door.is_alive()  # the door's read waits for the transaction to end...
    release.set()
    writer.join(5)
    door.join(5)
    assert seen == [[]]  # ...and then sees nothing of it
    gallery.close()
