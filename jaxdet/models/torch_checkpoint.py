"""Reading PyTorch's `.pth` files (the zip format of `torch.save`, torch >= 1.6) without torch.

A `.pth` written by `torch.save` is a zip archive `NAME/data.pkl`, `NAME/data/<key>`,
`NAME/byteorder`, ...: the pickle holds the object's structure, and each tensor is a call
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` whose storage is a
persistent id `("storage", torch.FloatStorage, key, location, numel)` naming the raw bytes of
`NAME/data/<key>`. A pickle may name any importable callable, so loading one with
`pickle.load` runs whatever it names: this reader's unpickler resolves only

  * `torch._utils._rebuild_tensor_v2` (tensors, as numpy arrays),
  * the storage types `torch.FloatStorage`, `torch.HalfStorage`, ... and `torch.UntypedStorage`,
  * `collections.OrderedDict`,

plus the containers and scalars that pickle builds without naming a callable (dict, list,
tuple, str, numbers, None). Any other global is refused with `UnsafeCheckpointError` naming it,
before anything is called. Tensors that share a storage (views, tied weights) are read from one
copy of its bytes; each returned array is a contiguous copy of its view (offset and strides
honoured).

    state = load_state_dict("fasterrcnn_resnet50_fpn_coco.pth")   # {"backbone.body.conv1.weight": ndarray, ...}
"""

import collections
import io
import pickle
import zipfile
from typing import Any, Dict

import numpy as np

try:  # bfloat16 storages; ml_dtypes comes with jax
    import ml_dtypes
    _BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    _BFLOAT16 = None


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The pickle names a global other than tensors, storages and plain containers."""


class CheckpointFormatError(ValueError):
    """The file is not a PyTorch zip checkpoint this reader understands."""


# torch's typed storage names -> numpy dtypes (little-endian in the file unless `byteorder` says big).
STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "UntypedStorage": np.dtype(np.uint8),
}
if _BFLOAT16 is not None:
    STORAGE_DTYPES["BFloat16Storage"] = _BFLOAT16


class _StorageType:
    """What `torch.<Name>Storage` resolves to: a marker carrying the numpy dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]

    def __repr__(self):
        return f"torch.{self.name}"


class _Storage:
    """One storage of the archive: a flat numpy array of `dtype`."""

    def __init__(self, array: np.ndarray):
        self.array = array


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """torch._utils._rebuild_tensor_v2 with numpy: the view of `storage` as a contiguous copy."""
    del requires_grad, backward_hooks, metadata
    if not isinstance(storage, _Storage):
        raise UnsafeCheckpointError(f"_rebuild_tensor_v2 called on {type(storage).__name__}, not a storage")
    flat = storage.array
    size, stride = tuple(int(n) for n in size), tuple(int(n) for n in stride)
    offset = int(storage_offset)
    if any(n < 0 for n in size) or any(s < 0 for s in stride) or offset < 0:
        raise CheckpointFormatError(f"tensor with negative size {size}, stride {stride} or offset {offset}")
    if size and all(n > 0 for n in size):
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= flat.size:
            raise CheckpointFormatError(f"tensor view (offset {offset}, size {size}, stride {stride}) runs past "
                                        f"its storage of {flat.size} elements")
    if 0 in size:
        return np.zeros(size, flat.dtype)
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size, strides=tuple(s * itemsize for s in stride),
                                           writeable=False)
    return np.array(view, copy=True, order="C")


_ALLOWED = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
            ("collections", "OrderedDict"): collections.OrderedDict}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of `_ALLOWED` and torch's storage types; storages from `read_record`."""

    def __init__(self, file, read_record, byteorder):
        super().__init__(file)
        self._read_record = read_record
        self._byteorder = byteorder
        self._storages: Dict[str, _Storage] = {}

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(
            f"refusing to load the global {module}.{name}: a PyTorch checkpoint for jaxdet holds only tensors, "
            f"storages and plain containers (dict, list, tuple, OrderedDict, numbers, strings)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"refusing the persistent id {pid!r}: only ('storage', ...) records")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError(f"storage record of type {storage_type!r}, not a torch storage type")
        key = str(key)
        if key not in self._storages:
            raw = self._read_record(key)
            dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
            if len(raw) % dtype.itemsize:
                raise CheckpointFormatError(f"storage {key}: {len(raw)} bytes is no whole number of {dtype} items")
            array = np.frombuffer(raw, dtype=dtype).astype(storage_type.dtype, copy=True)
            self._storages[key] = _Storage(array)
        storage = self._storages[key]
        if storage.array.dtype != storage_type.dtype:  # one key read under two types
            raise CheckpointFormatError(f"storage {key} is referenced as {storage.array.dtype} and {storage_type.dtype}")
        del numel  # typed storages: element count; the record's size is what is read
        return storage


def load(path_or_file) -> Any:
    """The object `torch.save` wrote, tensors as numpy arrays.

    Args:
      path_or_file: a path or a binary file object of a zip-format `.pth`.

    Returns:
      The saved object: dicts (OrderedDicts), lists, tuples, numbers, strings and numpy arrays.

    Raises:
      UnsafeCheckpointError: the pickle names anything but tensors, storages and containers.
      CheckpointFormatError: not a zip-format PyTorch file (e.g. the legacy format of torch < 1.6).
    """
    if not zipfile.is_zipfile(path_or_file):
        raise CheckpointFormatError(
            f"{path_or_file!r} is not a zip-format PyTorch checkpoint (torch.save since torch 1.6 writes one; "
            f"re-save a legacy file with torch.save(torch.load(old), new))")
    if hasattr(path_or_file, "seek"):
        path_or_file.seek(0)
    with zipfile.ZipFile(path_or_file) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointFormatError(f"expected one <name>/data.pkl in the archive, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode("ascii").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointFormatError(f"unknown byteorder {byteorder!r}")

        def read_record(key):
            try:
                return archive.read(f"{prefix}data/{key}")
            except KeyError:
                raise CheckpointFormatError(f"the pickle names storage {key}, absent from the archive") from None

        unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), read_record, byteorder)
        return unpickler.load()


def flatten_state_dict(obj, prefix="") -> Dict[str, np.ndarray]:
    """Nested dicts of arrays -> {"a.b.c": array}; non-array leaves are dropped."""
    flat = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            flat.update(flatten_state_dict(value, f"{prefix}{key}."))
    elif isinstance(obj, np.ndarray):
        flat[prefix[:-1]] = obj
    return flat


def load_state_dict(path_or_file) -> Dict[str, np.ndarray]:
    """The state dict of a `.pth`: {name: array} (torch's names, torch's layouts: OIHW, [out, in]).

    A file holding {"model": state_dict, ...} (torchvision's reference training checkpoints) or
    {"state_dict": ...} gives that entry.
    """
    obj = load(path_or_file)
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"the checkpoint holds a {type(obj).__name__}, not a state dict")
    return {name: value for name, value in obj.items() if isinstance(value, np.ndarray)}
