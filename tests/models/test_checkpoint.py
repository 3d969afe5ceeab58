"""The PyTorch checkpoint reader: the published weights read exactly as torch reads them, both
save formats with views into shared storages, and pickles that try to run code or reach outside
their storages refused with one-line errors."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from service_helpers import need_torch

from facelock_mqtt.errors import BundleError
from facelock_mqtt.guards.liveness import MODELS
from facelock_mqtt.models import checkpoint
from facelock_mqtt.models.checkpoint import load_state_dict, read_state_dict

# --- hand-built legacy checkpoints (no torch needed) -------------------------------------------
# The pickle names stand-ins defined here; their GLOBAL opcodes are then renamed to the torch
# names a real checkpoint uses, so the bytes are what torch.save writes, opcode for opcode.


def _rebuild(*args):  # stands in for torch._utils._rebuild_tensor_v2
    raise AssertionError("never called: renamed in the pickle")


class FloatStorage:  # stands in for torch.FloatStorage
    pass


class LongStorage:  # stands in for torch.LongStorage
    pass


def _global(obj: object) -> bytes:
    return f"c{obj.__module__}\n{obj.__qualname__}\n".encode()


RENAMES = {
    _global(_rebuild): b"ctorch._utils\n_rebuild_tensor_v2\n",
    _global(FloatStorage): b"ctorch\nFloatStorage\n",
    _global(LongStorage): b"ctorch\nLongStorage\n",
}


class Storage:
    def __init__(self, key: str, kind: type, data: np.ndarray) -> None:
        self.key, self.kind, self.data = key, kind, data


class Tensor:
    def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.args = (storage, offset, size, stride, False, OrderedDict())

    def __reduce__(self):
        return _rebuild, self.args


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: object):
        if isinstance(obj, Storage):
            return ("storage", obj.kind, obj.key, "cuda:0", len(obj.data), None)
        return None


def _dumps(obj: object, pickler: type[pickle.Pickler] = pickle.Pickler) -> bytes:
    out = io.BytesIO()
    pickler(out, protocol=2).dump(obj)
    data = out.getvalue()
    for ours, theirs in RENAMES.items():
        data = data.replace(ours, theirs)
    return data


def header() -> bytes:
    """The three pickles a legacy checkpoint starts with: magic number, protocol, system info."""
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return _dumps(checkpoint.LEGACY_MAGIC) + _dumps(checkpoint.LEGACY_PROTOCOL) + _dumps(info)


def legacy(state: object, storages: list[Storage], counts: dict[str, int] | None = None) -> bytes:
    """A legacy-format checkpoint: the header, `state`, the key list, then each storage's bytes."""
    parts = [header(), _dumps(state, _Pickler), _dumps([s.key for s in storages])]
    for s in storages:
        count = (counts or {}).get(s.key, len(s.data))
        parts.append(struct.pack("<q", count) + s.data.astype(s.data.dtype.newbyteorder("<")).tobytes())
    return b"".join(parts)


def shared_storage() -> Storage:
    return Storage("140", FloatStorage, np.arange(24, dtype=np.float32))


def test_a_hand_built_legacy_checkpoint_honours_offset_size_and_stride() -> None:
    floats = shared_storage()
    counter = Storage("7", LongStorage, np.array([123456789012], np.int64))
    state = OrderedDict(
        whole=Tensor(floats, 0, (4, 6), (6, 1)),
        every_other=Tensor(floats, 2, (3, 2), (6, 2)),
        transposed=Tensor(floats, 0, (6, 4), (1, 6)),
        count=Tensor(counter, 0, (), ()),
    )
    got = read_state_dict(legacy(state, [floats, counter]))
    grid = np.arange(24, dtype=np.float32).reshape(4, 6)
    assert list(got) == ["whole", "every_other", "transposed", "count"]
    assert np.array_equal(got["whole"], grid)
    assert np.array_equal(got["every_other"], grid[:3, 2::2])
    assert np.array_equal(got["transposed"], grid.T)
    assert got["count"].dtype == np.int64 and got["count"].shape == () and got["count"] == 123456789012
    got["whole"][0, 0] = -1  # copies, not views of one another
    assert got["transposed"][0, 0] == 0


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(lambda s: legacy({"w": Tensor(s, 20, (2, 3), (3, 1))}, [s]), "past the end", id="view-past-end"),
        pytest.param(lambda s: legacy({"w": Tensor(s, 0, (4,), (-1,))}, [s]), "malformed tensor", id="negative-stride"),
        pytest.param(lambda s: legacy({"w": Tensor(s, 0, (4,), (1, 1))}, [s]), "malformed tensor", id="rank-mismatch"),
        pytest.param(
            lambda s: legacy({"w": Tensor(s, 0, (24,), (1,))}, [s], counts={"140": 25}), "wrong size", id="bad-count"
        ),
        pytest.param(lambda s: legacy({"w": Tensor(s, 0, (24,), (1,))}, [s])[:-5], "truncated", id="truncated"),
        pytest.param(lambda s: legacy([Tensor(s, 0, (24,), (1,))], [s]), "not a state dict", id="a-list"),
        pytest.param(lambda s: legacy({"w": "text"}, []), "not a tensor", id="not-a-tensor"),
        pytest.param(lambda s: b"PK\x03\x04" + b"\0" * 40, "not a readable PyTorch checkpoint", id="garbage"),
    ],
)
def test_malformed_checkpoints_are_refused_in_one_line(build, message: str) -> None:
    with pytest.raises(BundleError, match=message) as caught:
        read_state_dict(build(shared_storage()), "w.pth")
    assert "\n" not in str(caught.value) and str(caught.value).startswith("w.pth")


# --- code in the pickle ------------------------------------------------------------------------


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_a_command_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = pickle.dumps({"w": RunsCode(marker)}, protocol=2)
    cases = {
        "as the state dict": header() + evil,
        "as the magic number": evil,
        "in a zip checkpoint": _zip({"archive/data.pkl": evil}),
    }
    for where, data in cases.items():
        with pytest.raises(BundleError, match=r"refuses to run posix\.system") as caught:
            read_state_dict(data, "evil.pth")
        assert "\n" not in str(caught.value), where
    assert not marker.exists()


def test_only_tensor_rebuilding_names_resolve() -> None:
    for module, name in [("builtins", "eval"), ("torch", "load"), ("torch._utils", "_rebuild_qtensor")]:
        data = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"."
        with pytest.raises(BundleError, match=f"refuses to run {module}.{name}"):
            read_state_dict(data)
    # A storage type is data, not a constructor: calling one fails instead of building anything.
    called = b"\x80\x02ctorch\nFloatStorage\n)R."
    with pytest.raises(BundleError, match="not a readable"):
        read_state_dict(called)


def _zip(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue()


# --- against PyTorch ---------------------------------------------------------------------------


def test_the_published_weights_read_exactly_as_torch_reads_them(shared_models: Path) -> None:
    need_torch()
    import torch

    for spec in MODELS:
        path = shared_models / "minifasnet" / spec.weights_file
        ours = load_state_dict(path)
        theirs = torch.load(path, map_location="cpu", weights_only=True)
        assert list(ours) == list(theirs) and len(ours) > 300
        for key, value in theirs.items():
            assert ours[key].dtype == value.numpy().dtype and np.array_equal(ours[key], value.numpy()), key


def test_both_torch_save_formats_with_views_and_parameters(tmp_path: Path) -> None:
    need_torch()
    import torch

    grid = torch.arange(24.0).reshape(4, 6)
    state = {
        "column_pairs": grid[:, 1::2], "transposed": grid.T, "row": grid[2], "empty": torch.zeros(0, 3),
        "steps": torch.tensor(7, dtype=torch.int64), "half": torch.ones(3, dtype=torch.float16),
        "parameter": torch.nn.Parameter(torch.full((2,), 0.5)), "small": torch.arange(5, dtype=torch.int16),
    }  # fmt: skip
    for zip_format in (True, False):
        path = tmp_path / f"zip{zip_format}.pth"
        torch.save(state, path, _use_new_zipfile_serialization=zip_format)
        assert zipfile.is_zipfile(path) == zip_format
        got = load_state_dict(path)
        for key, value in state.items():
            expected = value.detach().numpy()
            assert got[key].dtype == expected.dtype and np.array_equal(got[key], expected), (zip_format, key)
        # A truncated file of either format is refused, not half read.
        data = path.read_bytes()
        with pytest.raises(BundleError):
            read_state_dict(data[: len(data) * 2 // 3], path.name)


def test_a_missing_file_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="cannot read"):
        load_state_dict(tmp_path / "none.pth")
