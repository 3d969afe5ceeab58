"""Read a PyTorch checkpoint holding a state dict into numpy arrays, without PyTorch.

Both formats `torch.save` writes are read: the zip archive (`<name>/data.pkl` plus one entry per
storage under `<name>/data/`) and the legacy stream the Silent-Face weights use (five pickles in
a row: magic number, protocol version, system info, the state dict, the storage keys; then each
storage's raw bytes, preceded by its element count).

A checkpoint is a pickle, and unpickling runs whatever callables it names. The unpickler here
resolves only the names that rebuilding a state dict of tensors needs, each to a function of this
module that builds plain data; any other name (`os.system`, `builtins.eval`, ...) is refused with
a BundleError before anything runs.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BundleError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
MAX_BYTES = 64 * 1024 * 1024  # the MiniFASNet files are under 2 MB

# Storage classes as pickled by torch.save, and the little-endian dtype of their elements.
_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


@dataclass(frozen=True, slots=True)
class _StorageType:
    """What `torch.FloatStorage` & co. unpickle to: a dtype, deliberately not callable."""

    dtype: np.dtype


class _Storage:
    """One storage: its dtype and element count; the data may arrive after the pickle (legacy)."""

    __slots__ = ("key", "dtype", "numel", "data")

    def __init__(self, key: str, dtype: np.dtype, numel: int) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class _TensorRef:
    """A tensor as the pickle describes it: a view (offset, size, stride) into a storage."""

    storage: object
    offset: object
    size: object
    stride: object


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None) -> _TensorRef:
    # Checked when materialised, after every storage's data is known.
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None) -> object:
    return data  # an nn.Parameter is its tensor here


_ALLOWED: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(np.dtype(code)) for name, code in _STORAGE_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only the names in `_ALLOWED`; persistent ids go to `storage` (None: refused)."""

    def __init__(self, file: io.BytesIO, storage: Callable[[object], _Storage] | None = None) -> None:
        super().__init__(file)
        self._storage = storage

    def find_class(self, module: str, name: str) -> object:
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise BundleError(f"refuses to run {module}.{name}: a weights file may only hold tensors")
        return allowed

    def persistent_load(self, pid: object) -> _Storage:
        if self._storage is None:
            raise pickle.UnpicklingError("unexpected storage reference")
        return self._storage(pid)


def _is_int(value: object, minimum: int = 0) -> bool:
    return type(value) is int and value >= minimum


def _new_storage(storages: dict[str, _Storage], kind: object, key: object, numel: object) -> _Storage:
    """The storage `key` (created on first reference; later references must agree)."""
    if not (isinstance(kind, _StorageType) and isinstance(key, str) and _is_int(numel)):
        raise pickle.UnpicklingError(f"malformed storage reference {key!r}")
    if numel * kind.dtype.itemsize > MAX_BYTES:
        raise pickle.UnpicklingError(f"storage {key} is larger than {MAX_BYTES} bytes")
    storage = storages.setdefault(key, _Storage(key, kind.dtype, numel))
    if (storage.dtype, storage.numel) != (kind.dtype, numel):
        raise pickle.UnpicklingError(f"storage {key} is referenced with two different types")
    return storage


def _load_legacy(stream: io.BytesIO) -> object:
    """The legacy (pre-1.6) stream: header pickles, the object, the key list, then raw storages."""
    if _Unpickler(stream).load() != LEGACY_MAGIC:
        raise pickle.UnpicklingError("no PyTorch magic number")
    if _Unpickler(stream).load() != LEGACY_PROTOCOL:
        raise pickle.UnpicklingError("unknown legacy protocol version")
    info = _Unpickler(stream).load()
    if not isinstance(info, dict) or info.get("little_endian") is not True:
        raise pickle.UnpicklingError("only little-endian checkpoints are supported")
    storages: dict[str, _Storage] = {}

    def storage(pid: object) -> _Storage:
        # ('storage', storage type, key, device, element count, view metadata)
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage" and pid[5] is None):
            raise pickle.UnpicklingError(f"unsupported storage reference {pid!r:.80}")
        return _new_storage(storages, pid[1], pid[2], pid[4])

    result = _Unpickler(stream, storage).load()
    keys = _Unpickler(stream).load()
    if not isinstance(keys, list) or sorted(keys) != sorted(storages):
        raise pickle.UnpicklingError("the storage list does not match the tensors")
    for key in keys:
        entry = storages[key]
        header = stream.read(8)
        if len(header) != 8 or struct.unpack("<q", header)[0] != entry.numel:
            raise pickle.UnpicklingError(f"storage {key} is truncated or has the wrong size")
        raw = stream.read(entry.numel * entry.dtype.itemsize)
        if len(raw) != entry.numel * entry.dtype.itemsize:
            raise pickle.UnpicklingError(f"storage {key} is truncated")
        entry.data = np.frombuffer(raw, entry.dtype)
    return result


def _load_zip(archive: zipfile.ZipFile) -> object:
    """The zip format: `<prefix>data.pkl`, storages in `<prefix>data/<key>`."""
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise pickle.UnpicklingError("no single <name>/data.pkl in the archive")
    prefix = pickles[0].removesuffix("data.pkl")
    if prefix + "byteorder" in archive.namelist() and archive.read(prefix + "byteorder") != b"little":
        raise pickle.UnpicklingError("only little-endian checkpoints are supported")
    storages: dict[str, _Storage] = {}

    def storage(pid: object) -> _Storage:
        # ('storage', storage type, key, device, element count)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported storage reference {pid!r:.80}")
        entry = _new_storage(storages, pid[1], pid[2], pid[4])
        if entry.data is None:
            name = f"{prefix}data/{entry.key}"
            # Size checked before reading: a zip entry may claim to inflate to anything.
            if archive.getinfo(name).file_size != entry.numel * entry.dtype.itemsize:
                raise pickle.UnpicklingError(f"storage {entry.key} has the wrong size")
            entry.data = np.frombuffer(archive.read(name), entry.dtype)
        return entry

    return _Unpickler(io.BytesIO(archive.read(pickles[0])), storage).load()


def _tensor(ref: _TensorRef) -> np.ndarray:
    """Copy the view `ref` describes out of its storage, after checking it stays inside it."""
    storage, offset, size, stride = ref.storage, ref.offset, ref.size, ref.stride
    if not (isinstance(storage, _Storage) and storage.data is not None and _is_int(offset)
            and isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
            and all(_is_int(n) for n in size) and all(_is_int(s) for s in stride)):
        raise pickle.UnpicklingError("malformed tensor")
    if 0 in size:
        return np.zeros(size, storage.dtype.newbyteorder("="))
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.numel:
        raise pickle.UnpicklingError(f"a tensor reaches past the end of storage {storage.key}")
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage.data[offset:], shape=size, strides=[s * itemsize for s in stride], writeable=False
    )
    return view.astype(storage.dtype.newbyteorder("="), copy=True)


def read_state_dict(data: bytes, name: str = "checkpoint") -> dict[str, np.ndarray]:
    """The state dict in a checkpoint's bytes: parameter name -> numpy array (native byte order).

    BundleError (one line, naming `name`) for anything that is not a state dict of tensors.
    """
    if len(data) > MAX_BYTES:
        raise BundleError(f"{name} is larger than {MAX_BYTES} bytes: not a model weights file")
    stream = io.BytesIO(data)
    try:
        is_zip = zipfile.is_zipfile(stream)
        stream.seek(0)
        if is_zip:
            with zipfile.ZipFile(stream) as archive:
                result = _load_zip(archive)
        else:
            result = _load_legacy(stream)
        if not isinstance(result, dict):
            raise pickle.UnpicklingError(f"holds a {type(result).__name__}, not a state dict")
        state = {}
        for key, value in result.items():
            if not (isinstance(key, str) and isinstance(value, _TensorRef)):
                raise pickle.UnpicklingError(f"entry {key!r:.60} is not a tensor")
            state[key] = _tensor(value)
    except BundleError as exc:
        raise BundleError(f"{name}: {exc}") from exc
    # Unpickling a damaged file raises many unrelated types (EOFError, KeyError, struct.error, ...).
    except Exception as exc:
        raise BundleError(f"{name} is not a readable PyTorch checkpoint: {exc}") from exc
    return state


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """`read_state_dict` of a file."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise BundleError(f"{path} is larger than {MAX_BYTES} bytes: not a model weights file")
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return read_state_dict(data, str(path))
