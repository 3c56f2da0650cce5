"""The input pipeline: batch format, padding masks, buckets, determinism, resume, shards."""

import threading

import numpy as np
import pytest

from jaxdet.data import (
    DataError,
    InputPipeline,
    Record,
    ShapesConfig,
    hflip,
    make_dataset,
    make_shapes,
    normalize,
    resize,
)

SMALL = ShapesConfig(image_size=(32, 40), min_object_size=6, max_object_size=20, max_objects=3)


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _mixed_dataset(n=10):
    """Landscape and portrait images of several sizes, boxes and difficult flags (in memory)."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        h, w = ((30, 44), (50, 28), (36, 36))[i % 3]
        m = i % 4
        x1 = rng.uniform(0, w / 2, m)
        y1 = rng.uniform(0, h / 2, m)
        boxes = np.stack([x1, y1, x1 + rng.uniform(2, w / 2, m), y1 + rng.uniform(2, h / 2, m)], 1)
        records.append(Record(
            image_id=i, height=h, width=w, boxes=boxes.astype(np.float32).reshape(-1, 4),
            labels=rng.integers(0, 3, m).astype(np.int32), difficult=np.arange(m) == 2,
            iscrowd=np.zeros(m, bool), image=rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            source_id=f"img{i}"))
    return make_dataset(records, ("a", "b", "c"))


def test_batch_format_padding_and_content():
    ds = _mixed_dataset()
    pipe = InputPipeline(ds, batch_size=2, max_boxes=5, min_size=60, max_size=80,
                         buckets=((64, 80), (80, 64)), shuffle=True, flip=True, seed=3,
                         drop_remainder=False)
    flips = seen = 0
    for step in range(pipe.steps_per_epoch):
        batch = pipe.build_batch(step)
        shapes = {k: v.shape for k, v in batch.items()}
        height, width = batch["images"].shape[1:3]
        assert (height, width) in pipe.buckets
        assert shapes == {"images": (2, height, width, 3), "boxes": (2, 5, 4), "labels": (2, 5),
                          "valid": (2, 5), "image_hw": (2, 2), "scale": (2,),
                          "orig_hw": (2, 2), "image_id": (2,)}
        assert batch["images"].dtype == np.float32 and batch["labels"].dtype == np.int32
        assert batch["valid"].dtype == bool and batch["image_id"].dtype == np.int64
        for slot in range(2):
            image_id = batch["image_id"][slot]
            if image_id < 0:  # filler of a last partial batch
                assert not batch["valid"][slot].any() and not batch["images"][slot].any()
                continue
            r = ds[image_id]
            h, w = batch["image_hw"][slot]
            # Recompute the example independently from the record and the documented recipe.
            image, boxes, scale = resize(r.image, r.boxes, min_size=60, max_size=80)
            # Flipped or not, image and boxes must have gone together.
            if not np.allclose(batch["images"][slot, :h, :w], normalize(image), atol=1e-6):
                image, boxes = hflip(image, boxes)
                flips += 1
            seen += 1
            assert (h, w) == image.shape[:2] and batch["scale"][slot] == pytest.approx(scale)
            np.testing.assert_array_equal(batch["orig_hw"][slot], (r.height, r.width))
            np.testing.assert_allclose(batch["images"][slot, :h, :w], normalize(image), atol=1e-6)
            assert not batch["images"][slot, h:].any() and not batch["images"][slot, :, w:].any()
            m = len(r.labels)
            np.testing.assert_allclose(batch["boxes"][slot, :m], boxes, rtol=1e-6)
            np.testing.assert_array_equal(batch["labels"][slot, :m], r.labels)
            np.testing.assert_array_equal(batch["valid"][slot, :m], ~r.difficult)
            assert not batch["valid"][slot, m:].any()
            assert not batch["boxes"][slot, m:].any() and not batch["labels"][slot, m:].any()
    assert seen == len(ds) and 0 < flips < seen


def test_every_image_once_per_epoch_in_its_bucket():
    ds = _mixed_dataset(11)
    pipe = InputPipeline(ds, batch_size=2, max_boxes=4, min_size=60, max_size=80,
                         buckets=((64, 80), (80, 64)), drop_remainder=False, seed=1)
    ids = []
    for batch in pipe.epoch():
        for image_id, (h, w) in zip(batch["image_id"], batch["image_hw"]):
            if image_id >= 0:
                ids.append(int(image_id))
                bucket = batch["images"].shape[1:3]
                assert h <= bucket[0] and w <= bucket[1]
                # The smallest bucket that fits (landscape content never goes portrait).
                assert (bucket == (80, 64)) == (h > 64)
    assert sorted(ids) == list(range(11))


def test_same_seed_same_batches_other_seed_other_order():
    ds = make_shapes(24, seed=0, config=SMALL)
    kwargs = dict(batch_size=4, max_boxes=4, min_size=None, max_size=None)
    first = list(InputPipeline(ds, seed=7, num_workers=3, **kwargs).batches(0, 9))
    second = list(InputPipeline(ds, seed=7, num_workers=1, prefetch=1, **kwargs).batches(0, 9))
    for a, b in zip(first, second):
        _assert_same(a, b)
    other = list(InputPipeline(ds, seed=8, **kwargs).batches(0, 9))
    assert any(not np.array_equal(a["image_id"], b["image_id"]) for a, b in zip(first, other))
    # Epochs are reshuffled: epoch 1 (steps 6..11) is not epoch 0 again.
    ids = [b["image_id"] for b in first]
    assert not np.array_equal(np.concatenate(ids[:3]), np.concatenate(ids[6:9]))


def test_resume_at_a_step_reproduces_the_rest():
    ds = make_shapes(20, seed=1, config=SMALL)
    pipe = InputPipeline(ds, batch_size=3, max_boxes=4, min_size=None, max_size=None, seed=4)
    assert pipe.steps_per_epoch == 6  # 20 // 3, remainder dropped
    full = list(pipe.batches(0, 14))
    # A fresh pipeline (as after a restart) resuming mid-epoch and across an epoch boundary.
    for start in (4, 5, 6, 11):
        resumed = list(InputPipeline(ds, batch_size=3, max_boxes=4, min_size=None,
                                     max_size=None, seed=4).batches(start, 14 - start))
        for a, b in zip(full[start:], resumed):
            _assert_same(a, b)


def test_shards_split_each_global_batch():
    ds = make_shapes(16, seed=2, config=SMALL)
    kwargs = dict(max_boxes=4, min_size=None, max_size=None, seed=9)
    whole = list(InputPipeline(ds, batch_size=4, **kwargs).batches(0, 4))
    shards = [list(InputPipeline(ds, batch_size=2, num_shards=2, shard_index=k, **kwargs)
                   .batches(0, 4)) for k in range(2)]
    for step in range(4):
        np.testing.assert_array_equal(
            np.concatenate([shards[0][step]["image_id"], shards[1][step]["image_id"]]),
            whole[step]["image_id"])


def test_too_many_boxes_names_the_image_and_ignored_boxes_make_room():
    boxes = np.array([[0, 0, 4, 4], [1, 1, 5, 5], [2, 2, 6, 6]], np.float32)
    record = Record(image_id=0, height=8, width=8, boxes=boxes, labels=np.array([0, 1, 2]),
                    difficult=np.array([False, True, False]), iscrowd=np.zeros(3, bool),
                    image=np.zeros((8, 8, 3), np.uint8), source_id="crowded")
    ds = make_dataset([record], ("a", "b", "c"))
    kwargs = dict(batch_size=1, min_size=None, max_size=None, flip=False)
    batch = InputPipeline(ds, max_boxes=2, **kwargs).build_batch(0)
    np.testing.assert_array_equal(batch["labels"][0], [0, 2])
    assert batch["valid"][0].all()
    # Found when the pipeline is made, not when the image's batch is built.
    with pytest.raises(DataError, match=r"image 'crowded': 2 boxes to train on, more than config.data.max_boxes=1.*"
                                        r"set config.data.max_boxes=2"):
        InputPipeline(ds, max_boxes=1, **kwargs)


def test_an_unreadable_image_is_a_blank_slot_under_skip(tmp_path):
    ds = make_shapes(4, seed=0, config=SMALL)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a PNG")
    records = list(ds.records)
    records[1] = Record(image_id=1, height=32, width=40, boxes=records[1].boxes, labels=records[1].labels,
                        difficult=records[1].difficult, iscrowd=records[1].iscrowd, path=str(broken))
    ds = make_dataset(records, ds.class_names)
    kwargs = dict(batch_size=4, min_size=None, max_size=None, shuffle=False, flip=False)
    with pytest.raises(DataError, match="broken.png: image cannot be decoded"):
        InputPipeline(ds, **kwargs).build_batch(0)
    pipeline = InputPipeline(ds, on_error="skip", **kwargs)
    with pytest.warns(UserWarning, match=r"skipping: .*broken.png: image cannot be decoded.*\(1 unreadable image so"):
        batch = pipeline.build_batch(0)
    assert not batch["images"][1].any() and not batch["valid"][1].any()
    assert batch["image_hw"][1].tolist() == [32, 40] and batch["image_id"][1] == 1
    assert batch["valid"][0].any() and list(pipeline.unreadable) == [str(broken)]


def test_cached_images_give_the_same_batches_and_are_decoded_once(tmp_path, monkeypatch):
    """Images read from PNG files, resized, flipped, over two epochs: the cache changes nothing in
    the batches, and each file is decoded once."""
    import jaxdet.data.pipeline as pipeline_module
    from jaxdet.data.records import save_image
    in_memory = make_shapes(6, seed=0, config=SMALL)
    records = [Record(image_id=r.image_id, height=r.height, width=r.width, boxes=r.boxes, labels=r.labels,
                      difficult=r.difficult, iscrowd=r.iscrowd,
                      path=str(tmp_path / save_image(r, str(tmp_path))))
               for r in in_memory.records]
    ds = make_dataset(records, in_memory.class_names)
    reads = []
    load_image = pipeline_module.load_image
    monkeypatch.setattr(pipeline_module, "load_image", lambda record: reads.append(record.path) or load_image(record))
    kwargs = dict(batch_size=2, min_size=40, max_size=60, shuffle=True, flip=True, seed=1, num_workers=1)
    plain, cached = InputPipeline(ds, **kwargs), InputPipeline(ds, cache_images=True, **kwargs)
    steps = 2 * plain.steps_per_epoch
    uncached_batches = list(plain.batches(0, steps))
    assert len(reads) == 2 * len(ds)
    reads.clear()
    for step, batch in enumerate(cached.batches(0, steps)):
        _assert_same(batch, uncached_batches[step])
    assert sorted(reads) == sorted(r.path for r in records)


def test_stopping_early_leaves_no_worker_threads():
    ds = make_shapes(12, seed=3, config=SMALL)
    before = threading.active_count()
    iterator = InputPipeline(ds, batch_size=2, min_size=None, max_size=None,
                             num_workers=3).batches()
    next(iterator)
    iterator.close()
    assert threading.active_count() == before


def test_bad_arguments():
    ds = make_shapes(4, seed=0, config=SMALL)
    with pytest.raises(ValueError, match="batch_size"):
        InputPipeline(ds, batch_size=0)
    with pytest.raises(ValueError, match="normalization"):
        InputPipeline(ds, batch_size=1, normalization="rgb")
    with pytest.raises(ValueError, match="fits no bucket"):
        InputPipeline(ds, batch_size=1, min_size=None, max_size=None, buckets=((16, 16),))
    with pytest.raises(ValueError, match="no full batch"):
        InputPipeline(ds, batch_size=5, min_size=None, max_size=None)
