"""Writes PyTorch-format `.pth` zip files without torch, for the reader's tests.

`write_pth(path, obj)` pickles `obj` as `torch.save` lays it out: `archive/data.pkl` (protocol 2),
`archive/data/<key>` per storage, `archive/byteorder`, `archive/version`. A `Tensor(storage,
offset, size, stride)` in `obj` pickles as `torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, False, OrderedDict())` and a `Storage(key, dtype_name, array)` as the persistent id
`("storage", torch.<dtype_name>, key, "cpu", numel)`; the globals are written by name, so torch is
not needed.
"""

import collections
import io
import pickle
import zipfile

import numpy as np


class Storage:
    def __init__(self, key, dtype_name, array):
        self.key, self.dtype_name, self.array = key, dtype_name, np.ascontiguousarray(array).reshape(-1)


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def __reduce__(self):
        return (_REBUILD, (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict()))


def _rebuild_marker():  # pickled by name as torch._utils._rebuild_tensor_v2
    raise AssertionError


_REBUILD = _rebuild_marker


class _StorageTypeMarker:
    def __init__(self, name):
        self.name = name


class _Pickler(pickle._Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", _StorageTypeMarker(obj.dtype_name), obj.key, "cpu", obj.array.size)
        return None

    def save(self, obj, save_persistent_id=True):
        if obj is _REBUILD:
            self.write(pickle.GLOBAL + b"torch._utils\n_rebuild_tensor_v2\n")
            return
        if isinstance(obj, _StorageTypeMarker):
            self.write(pickle.GLOBAL + f"torch\n{obj.name}\n".encode())
            return
        super().save(obj, save_persistent_id)


def storages_of(obj, found=None):
    found = {} if found is None else found
    if isinstance(obj, Tensor):
        found[obj.storage.key] = obj.storage
    elif isinstance(obj, dict):
        for v in obj.values():
            storages_of(v, found)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            storages_of(v, found)
    return found


def write_pth(path, obj, *, byteorder="little", pickle_bytes=None):
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle_bytes if pickle_bytes is not None else buffer.getvalue())
        archive.writestr("archive/byteorder", byteorder)
        archive.writestr("archive/version", "3\n")
        for key, storage in storages_of(obj).items():
            array = storage.array
            if byteorder == "big":
                array = array.astype(array.dtype.newbyteorder(">"))
            archive.writestr(f"archive/data/{key}", array.tobytes())


def tensor(key, array, dtype_name="FloatStorage"):
    """A contiguous tensor of `array` on its own storage."""
    array = np.asarray(array)
    strides = tuple(s // array.itemsize for s in np.ascontiguousarray(array).strides)
    return Tensor(Storage(key, dtype_name, array), 0, array.shape, strides)
