"""The torch-free `.pth` reader on hand-made PyTorch zip pickles (no torch needed)."""

import collections
import os
import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest

from jaxdet.models.torch_checkpoint import (CheckpointFormatError, UnsafeCheckpointError, load, load_state_dict)
from references.pth_writer import Storage, Tensor, tensor, write_pth


def test_tensors_nested_dicts_and_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.integers(-5, 5, (7,)).astype(np.int64)
    c = rng.standard_normal((2, 2)).astype(np.float16)
    d = np.array([True, False, True])
    e = rng.standard_normal((5,)).astype(ml_dtypes.bfloat16)
    f = rng.standard_normal((2, 3)).astype(np.float64)
    state = collections.OrderedDict([("a", tensor("0", a)), ("b", tensor("1", b, "LongStorage")),
                                     ("nested", {"c": tensor("2", c, "HalfStorage"), "d": tensor("3", d, "BoolStorage"),
                                                 "list": [tensor("4", e, "BFloat16Storage"), 3, "text"]}),
                                     ("f", tensor("5", f, "DoubleStorage")), ("epoch", 7)])
    path = tmp_path / "m.pth"
    write_pth(path, state)
    got = load(path)
    assert list(got) == ["a", "b", "nested", "f", "epoch"] and got["epoch"] == 7
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], b)
    assert got["nested"]["c"].dtype == np.float16 and got["nested"]["d"].dtype == np.bool_
    np.testing.assert_array_equal(got["nested"]["c"], c)
    np.testing.assert_array_equal(got["nested"]["d"], d)
    np.testing.assert_array_equal(got["nested"]["list"][0].astype(np.float32), e.astype(np.float32))
    assert got["nested"]["list"][1:] == [3, "text"]
    np.testing.assert_array_equal(got["f"], f)
    assert set(load_state_dict(path)) == {"a", "b", "f"}


def test_shared_storage_views_and_big_endian(tmp_path):
    base = np.arange(24, dtype=np.float32)
    storage = Storage("0", "FloatStorage", base)
    whole = Tensor(storage, 0, (4, 6), (6, 1))
    transposed = Tensor(storage, 0, (6, 4), (1, 6))           # a non-contiguous view
    row = Tensor(storage, 6, (6,), (1,))                       # offset into the same storage
    strided = Tensor(storage, 1, (2, 3), (12, 2))
    obj = {"model": {"w": whole, "wt": transposed, "row": row, "s": strided}, "optimizer": {}}
    for order in ("little", "big"):
        path = tmp_path / f"{order}.pth"
        write_pth(path, obj, byteorder=order)
        got = load_state_dict(path)  # {"model": ...} unwrapped
        np.testing.assert_array_equal(got["w"], base.reshape(4, 6))
        np.testing.assert_array_equal(got["wt"], base.reshape(4, 6).T)
        np.testing.assert_array_equal(got["row"], base[6:12])
        np.testing.assert_array_equal(got["s"], base.reshape(2, 12)[:, 1::2][:, :3])
        assert got["wt"].flags.c_contiguous


def test_malicious_pickle_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    write_pth(path, {"w": tensor("0", np.zeros(2, np.float32))}, pickle_bytes=pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match=r"(posix|os)\.system"):
        load(path)
    assert not marker.exists()
    # Any other global too, even a harmless one, is refused by name.
    write_pth(path, {}, pickle_bytes=pickle.dumps({"x": collections.Counter()}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="collections.Counter"):
        load(path)


def test_not_a_zip_checkpoint(tmp_path):
    path = tmp_path / "legacy.pth"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointFormatError, match="not a zip-format"):
        load(path)
    with zipfile.ZipFile(tmp_path / "empty.pth", "w") as archive:
        archive.writestr("x/other.txt", "")
    with pytest.raises(CheckpointFormatError, match="data.pkl"):
        load(tmp_path / "empty.pth")


def test_view_past_its_storage_refused(tmp_path):
    path = tmp_path / "bad.pth"
    write_pth(path, {"w": Tensor(Storage("0", "FloatStorage", np.zeros(4, np.float32)), 2, (3,), (1,))})
    with pytest.raises(CheckpointFormatError, match="runs past"):
        load(path)
