"""The Pascal VOC reader and writer on small trees written here by hand."""

import os
import warnings

import numpy as np
import pytest
from PIL import Image

from jaxdet.data import (DataError, InputPipeline, concat_datasets, find_voc_split, make_shapes, read_voc,
                         read_voc_class_names, write_voc)
from jaxdet.data.shapes import ShapesConfig

CLASSES = ("cat", "dog", "person")


def _xml(filename, width, height, objects):
    parts = [f"<annotation><filename>{filename}</filename>",
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for obj in objects:
        parts.append(obj if isinstance(obj, str) else _object(*obj))
    return "".join(parts) + "</annotation>"


def _object(name, xmin, ymin, xmax, ymax, difficult=0):
    return (f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>"
            f"<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def _write_tree(root, images, split="trainval", corrupt=(), missing=()):
    """images: stem -> (width, height, objects or raw XML text)."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for stem, (width, height, objects) in images.items():
        xml = objects if isinstance(objects, str) else _xml(f"{stem}.jpg", width, height, objects)
        with open(os.path.join(root, "Annotations", f"{stem}.xml"), "w") as f:
            f.write(xml)
        image_path = os.path.join(root, "JPEGImages", f"{stem}.jpg")
        if stem in corrupt:
            with open(image_path, "wb") as f:
                f.write(b"\xff\xd8\xff\xe0 this is not a jpeg")
        elif stem not in missing:
            Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(image_path)
    with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
        f.write("".join(f"{stem}\n" for stem in images))


def test_reads_boxes_labels_difficult_and_empty_images(tmp_path):
    root = str(tmp_path / "VOC2007")
    _write_tree(root, {
        "000001": (50, 40, [("dog", 1, 2, 10, 20), ("person", 5, 5, 50, 40, 1)]),
        "000002": (30, 30, []),
        "000003": (30, 20, [("cat", 3, 4, 30, 20, 0)]),
    })
    ds = read_voc(root, "trainval", class_names=CLASSES)
    assert ds.class_names == CLASSES and len(ds) == 3
    r = ds[0]
    assert (r.height, r.width, r.source_id) == (40, 50, "000001")
    assert r.path == os.path.join(root, "JPEGImages", "000001.jpg")
    # 1-based inclusive (xmin..xmax) -> continuous (xmin - 1, xmax); xmax == width fits.
    np.testing.assert_array_equal(r.boxes, [[0, 1, 10, 20], [4, 4, 50, 40]])
    np.testing.assert_array_equal(r.labels, [1, 2])
    np.testing.assert_array_equal(r.difficult, [False, True])
    assert not r.iscrowd.any()
    assert ds[1].boxes.shape == (0, 4) and ds[1].labels.shape == (0,)
    assert [rec.image_id for rec in ds.records] == [0, 1, 2]
    assert len(read_voc(root, "trainval", class_names=CLASSES, keep_empty=False)) == 2


def test_difficult_boxes_are_invalid_in_batches_unless_kept(tmp_path):
    root = str(tmp_path / "VOC")
    _write_tree(root, {"a": (20, 20, [("dog", 1, 1, 10, 10), ("cat", 5, 5, 20, 20, 1)])})
    ds = read_voc(root, class_names=CLASSES)
    common = dict(batch_size=1, max_boxes=4, min_size=None, max_size=None, shuffle=False,
                  flip=False)
    batch = InputPipeline(ds, **common).build_batch(0)
    np.testing.assert_array_equal(batch["valid"][0], [True, False, False, False])
    batch = InputPipeline(ds, keep_difficult=True, **common).build_batch(0)
    np.testing.assert_array_equal(batch["valid"][0], [True, True, False, False])


def test_joined_years_renumber_image_ids(tmp_path):
    r07, r12 = str(tmp_path / "VOC2007"), str(tmp_path / "VOC2012")
    _write_tree(r07, {"000005": (20, 20, [("cat", 1, 1, 5, 5)])})
    _write_tree(r12, {"2008_000002": (20, 20, [("dog", 2, 2, 6, 6)]),
                      "2008_000003": (20, 20, [("person", 3, 3, 7, 7)])})
    ds = concat_datasets(read_voc(r07, class_names=CLASSES), read_voc(r12, class_names=CLASSES))
    assert [r.image_id for r in ds.records] == [0, 1, 2]
    assert [r.source_id for r in ds.records] == ["000005", "2008_000002", "2008_000003"]
    assert [int(r.labels[0]) for r in ds.records] == [0, 1, 2]


# Each kind of bad file, with what its message must name.
BAD = {
    "unknown_class": ((20, 20, [("cat", 1, 1, 5, 5), ("unicorn", 1, 1, 5, 5)]),
                      ["bad.xml", "object 1", "unicorn", "unknown class"]),
    "inverted_box": ((20, 20, [("dog", 10, 1, 5, 5)]), ["bad.xml", "object 0", "inverted"]),
    "outside_image": ((20, 20, [("dog", 1, 1, 30, 5)]), ["bad.xml", "object 0", "outside"]),
    "non_numeric": ((20, 20, [("dog", 1, 1, "x", 5)]), ["bad.xml", "object 0", "<xmax>"]),
    "no_bndbox": ((20, 20, ["<object><name>dog</name></object>"]),
                  ["bad.xml", "object 0", "bndbox"]),
    "malformed_xml": ((20, 20, "<annotation><size>"), ["bad.xml", "malformed XML"]),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_annotation_raises_naming_file_and_object(tmp_path, kind):
    spec, words = BAD[kind]
    root = str(tmp_path / "VOC")
    _write_tree(root, {"good": (20, 20, [("cat", 1, 1, 5, 5)]), "bad": spec})
    with pytest.raises(DataError) as info:
        read_voc(root, class_names=CLASSES)
    for word in words:
        assert word in str(info.value)


def test_skip_policy_warns_counts_and_keeps_the_good_images(tmp_path):
    root = str(tmp_path / "VOC")
    images = {"good": (20, 20, [("cat", 1, 1, 5, 5)])}
    images.update({kind: spec for kind, (spec, _) in BAD.items()})
    images["missing_image"] = (20, 20, [("dog", 1, 1, 5, 5)])
    _write_tree(root, images, missing={"missing_image"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = read_voc(root, class_names=CLASSES, on_error="skip")
    assert [r.source_id for r in ds.records] == ["good"]
    assert len(ds.skipped) == len(BAD) + 1
    messages = " ".join(str(w.message) for w in caught)
    assert f"skipped {len(BAD) + 1} of {len(BAD) + 2} images" in messages
    assert "unicorn" in messages and "missing_image.jpg" in messages


def test_missing_and_corrupt_images(tmp_path):
    root = str(tmp_path / "VOC")
    _write_tree(root, {"gone": (20, 20, [("cat", 1, 1, 5, 5)])}, missing={"gone"})
    with pytest.raises(DataError, match="gone.jpg: image file is missing"):
        read_voc(root, class_names=CLASSES)

    root = str(tmp_path / "VOC_corrupt")
    _write_tree(root, {"broken": (20, 20, [("cat", 1, 1, 5, 5)])}, corrupt={"broken"})
    with pytest.raises(DataError, match="broken.jpg: image cannot be decoded"):
        read_voc(root, class_names=CLASSES, check_images=True)
    # Without the up-front check the loader meets it, and names it.
    ds = read_voc(root, class_names=CLASSES)
    pipeline = InputPipeline(ds, batch_size=1, min_size=None, max_size=None)
    with pytest.raises(DataError, match="broken.jpg: image cannot be decoded"):
        next(pipeline.batches(0, 1))


def test_image_size_that_disagrees_with_annotation(tmp_path):
    root = str(tmp_path / "VOC")
    _write_tree(root, {"a": (20, 20, [("cat", 1, 1, 5, 5)])})
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(os.path.join(root, "JPEGImages", "a.jpg"))
    with pytest.raises(DataError, match="a.jpg: image is 20x10 but its annotation says 20x20"):
        read_voc(root, class_names=CLASSES, check_images=True)


def test_missing_split_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="test.txt"):
        read_voc(str(tmp_path), "test")


def test_writer_round_trip(tmp_path):
    config = ShapesConfig(image_size=(48, 64), min_object_size=8, max_object_size=30)
    ds = make_shapes(5, seed=3, config=config)
    root = str(tmp_path / "shapes_voc")
    write_voc(ds, root, "val")
    back = read_voc(root, "val", class_names=ds.class_names, check_images=True)
    assert len(back) == len(ds)
    for a, b in zip(ds.records, back.records):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(np.asarray(Image.open(b.path)), a.image)
        assert (b.height, b.width, b.source_id) == (48, 64, a.source_id)


def test_split_list_with_a_byte_order_mark(tmp_path):
    """A list saved by an editor that starts it with a UTF-8 byte-order mark: the first id is
    read as itself, not as '\\ufeff000001' (a missing annotation)."""
    root = str(tmp_path / "VOC2007")
    _write_tree(root, {"000001": (20, 10, [("dog", 1, 1, 5, 5)]), "000002": (20, 10, [("cat", 2, 2, 9, 9)])})
    list_file = os.path.join(root, "ImageSets", "Main", "trainval.txt")
    with open(list_file, encoding="utf-8") as f:
        text = f.read()
    with open(list_file, "w", encoding="utf-8-sig") as f:
        f.write(text)
    ds = read_voc(root, "trainval")
    assert [r.source_id for r in ds.records] == ["000001", "000002"]


def test_sixteen_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    """PIL's own conversion clips 16-bit grayscale and float pixels to 255 (an all-white image)."""
    from jaxdet.data import load_image

    root = str(tmp_path / "VOC2007")
    _write_tree(root, {"deep": (16, 8, [("dog", 1, 1, 5, 5)]), "float": (16, 8, [("dog", 1, 1, 5, 5)]),
                       "hot": (16, 8, [("dog", 1, 1, 5, 5)])})
    gray16 = (np.arange(128).reshape(8, 16) * 500).astype(np.uint16)  # up to 63500
    Image.fromarray(gray16).save(os.path.join(root, "JPEGImages", "deep.png"))
    gray_float = np.linspace(0, 1, 128, dtype=np.float32).reshape(8, 16)
    Image.fromarray(gray_float).save(os.path.join(root, "JPEGImages", "float.tiff"))
    Image.fromarray(gray_float * 3).save(os.path.join(root, "JPEGImages", "hot.tiff"))
    for stem, ext in (("deep", "png"), ("float", "tiff"), ("hot", "tiff")):
        xml = os.path.join(root, "Annotations", f"{stem}.xml")
        with open(xml) as f:
            text = f.read().replace(f"{stem}.jpg", f"{stem}.{ext}")
        with open(xml, "w") as f:
            f.write(text)
    deep, flt, hot = read_voc(root, "trainval").records
    image = load_image(deep)
    assert image.shape == (8, 16, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], np.round(gray16 * (255 / 65535)).astype(np.uint8))
    np.testing.assert_array_equal(image[..., 1], image[..., 2])
    np.testing.assert_array_equal(load_image(flt)[..., 0], np.round(gray_float * 255.0).astype(np.uint8))
    with pytest.raises(DataError, match=r"hot\.tiff: a F image with values in \[0, 3\]"):
        load_image(hot)


def test_find_voc_split_reads_either_layout_by_what_is_on_disk(tmp_path):
    devkit, plain = str(tmp_path / "VOCdevkit"), str(tmp_path / "my_photos")
    _write_tree(os.path.join(devkit, "VOC2007"), {"000001": (20, 20, [("cat", 1, 1, 5, 5)])})
    _write_tree(plain, {"IMG_1": (20, 20, [("dog", 1, 1, 5, 5)])}, split="train")
    assert find_voc_split(devkit, "VOC2007/trainval") == (os.path.join(devkit, "VOC2007"), "trainval")
    assert find_voc_split(plain, "train") == (plain, "train")
    # A year folder is itself a plain tree.
    assert find_voc_split(os.path.join(devkit, "VOC2007"), "trainval") == (os.path.join(devkit, "VOC2007"),
                                                                          "trainval")
    with pytest.raises(FileNotFoundError) as info:
        find_voc_split(plain, "test")
    assert (os.path.join(plain, "YEAR", "ImageSets", "Main", "test.txt") in str(info.value)
            and os.path.join(plain, "ImageSets", "Main", "test.txt") in str(info.value))
    with pytest.raises(FileNotFoundError) as info:
        find_voc_split(devkit, "VOC2012/trainval")
    assert (os.path.join(devkit, "VOC2012", "ImageSets", "Main", "trainval.txt") in str(info.value)
            and os.path.join(devkit, "ImageSets", "Main", "VOC2012", "trainval.txt") in str(info.value))
    # A devkit split given without its year: the year folders that hold it are named.
    with pytest.raises(FileNotFoundError, match="name the split with its year, e.g. VOC2007/trainval"):
        find_voc_split(devkit, "trainval")


def test_class_names_found_in_the_annotations_sorted_once(tmp_path):
    root = str(tmp_path / "my_photos")
    _write_tree(root, {"a": (20, 20, [("zebra", 1, 1, 5, 5), (" apple ", 1, 1, 5, 5)]),
                       "b": (20, 20, [("zebra", 2, 2, 6, 6), ("", 2, 2, 6, 6)]),
                       "c": (20, 20, "<annotation><size>"),
                       "d": (20, 20, [])}, split="train")
    # Unreadable files and unnamed objects are left for read_voc to report.
    assert read_voc_class_names(root, "train") == ("apple", "zebra")
    with pytest.raises(DataError, match=r"object 1 \(''\) has an unknown class name, not one of the dataset's 2 "
                                        r"classes \(apple, zebra\)"):
        read_voc(root, "train", class_names=("apple", "zebra"))
