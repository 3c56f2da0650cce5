"""The synthetic shapes generator: determinism, exact boxes, options, files on disk."""

import numpy as np
import pytest
from PIL import Image

from jaxdet.data import SHAPES, ShapesConfig, make_shapes, read_coco, read_voc, write_shapes


def _same(a, b):
    return (np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
            and np.array_equal(a.labels, b.labels))


def test_same_seed_same_images_and_prefixes_agree():
    a = make_shapes(6, seed=5)
    b = make_shapes(6, seed=5)
    prefix = make_shapes(3, seed=5)
    other = make_shapes(6, seed=6)
    assert all(_same(x, y) for x, y in zip(a.records, b.records))
    assert all(_same(x, y) for x, y in zip(a.records, prefix.records))
    assert not any(_same(x, y) for x, y in zip(a.records, other.records))


def test_single_object_box_is_the_extent_of_its_pixels():
    # No noise and one object: the object is every pixel not of the background colour,
    # found here independently of the generator's own bookkeeping.
    config = ShapesConfig(image_size=(96, 80), classes=tuple(SHAPES), min_objects=1,
                          max_objects=1, min_object_size=6, max_object_size=60, noise_std=0.0,
                          max_aspect=2.0)
    ds = make_shapes(40, seed=1, config=config)
    for r in ds.records:
        pixels = r.image.reshape(-1, 3)
        colours, counts = np.unique(pixels, axis=0, return_counts=True)
        assert len(colours) == 2
        background = colours[np.argmax(counts)]
        if counts.min() == counts.max():
            continue  # ambiguous 50/50 split cannot tell which is background
        obj = np.any(r.image != background, axis=2)
        rows, cols = np.flatnonzero(obj.any(1)), np.flatnonzero(obj.any(0))
        np.testing.assert_array_equal(r.boxes, [[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]])
        longer = max(r.boxes[0, 2] - r.boxes[0, 0], r.boxes[0, 3] - r.boxes[0, 1])
        # Drawing on pixel centres can lose one row of a pointed shape.
        assert config.min_object_size - 1 <= longer <= config.max_object_size


def test_each_box_is_the_extent_of_one_colour():
    # No noise: every object shows in its own colour (colours are kept apart by min_contrast),
    # so each box must be the pixel extent of exactly one colour of the image.
    config = ShapesConfig(image_size=(64, 64), classes=("circle", "triangle", "hexagon", "cross"),
                          min_objects=2, max_objects=5, min_object_size=10,
                          max_object_size=40, noise_std=0.0)
    ds = make_shapes(30, seed=2, config=config)
    assert ds.class_names == ("circle", "triangle", "hexagon", "cross")
    seen = set()
    for r in ds.records:
        assert 1 <= len(r.labels) <= 5 and r.image.shape == (64, 64, 3)
        seen.update(r.labels.tolist())
        colours, index = np.unique(r.image.reshape(-1, 3), axis=0, return_inverse=True)
        assert len(colours) == len(r.labels) + 1
        extents = set()
        for k in range(len(colours)):
            mask = (index.reshape(64, 64) == k)
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            extents.add((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
        for box in r.boxes.astype(int).tolist():
            assert tuple(box) in extents
    assert seen == {0, 1, 2, 3}
    assert np.mean([len(r.labels) for r in ds.records]) > 2.5


def test_rejects_bad_configuration():
    with pytest.raises(ValueError, match="classes"):
        ShapesConfig(classes=("circle", "blob"))
    with pytest.raises(ValueError, match="max_object_size"):
        ShapesConfig(image_size=(32, 32), max_object_size=40)
    with pytest.raises(ValueError, match="min_objects"):
        ShapesConfig(min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="num_images"):
        make_shapes(0, seed=0)


@pytest.mark.parametrize("fmt", ["voc", "coco"])
def test_written_sets_read_back_identically(tmp_path, fmt):
    config = ShapesConfig(image_size=(48, 48), min_object_size=8, max_object_size=30)
    written = write_shapes(str(tmp_path), {"train": (4, 0), "test": (3, 1)}, format=fmt,
                           config=config)
    for split, (n, seed) in {"train": (4, 0), "test": (3, 1)}.items():
        if fmt == "voc":
            back = read_voc(written[split], split, class_names=config.classes)
        else:
            back = read_coco(*written[split])
        original = make_shapes(n, seed=seed, config=config)
        assert back.class_names == original.class_names
        for a, b in zip(original.records, back.records):
            np.testing.assert_array_equal(a.boxes, b.boxes)
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_array_equal(np.asarray(Image.open(b.path)), a.image)
    with pytest.raises(ValueError, match="distinct seeds"):
        write_shapes(str(tmp_path), {"a": (1, 0), "b": (1, 0)}, config=config)
