"""The COCO reader and writer on small instance files written here by hand."""

import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from jaxdet.data import (
    DataError,
    InputPipeline,
    dataset_to_coco,
    make_shapes,
    read_coco,
    write_coco,
)
from jaxdet.data.coco import xywh_to_xyxy, xyxy_to_xywh
from jaxdet.data.shapes import ShapesConfig

# Sparse ids, out of order, as in COCO itself.
CATEGORIES = [{"id": 7, "name": "zebra"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]


def _write(tmp_path, images, annotations, categories=CATEGORIES, missing=()):
    image_dir = tmp_path / "images"
    image_dir.mkdir(exist_ok=True)
    for image in images:
        if image["file_name"] not in missing:
            Image.fromarray(np.zeros((image["height"], image["width"], 3), np.uint8)).save(
                image_dir / image["file_name"])
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
    return str(path), str(image_dir)


def _image(image_id, name, width=40, height=30):
    return {"id": image_id, "file_name": name, "width": width, "height": height}


def _ann(ann_id, image_id, category_id, bbox, iscrowd=0):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "iscrowd": iscrowd, "area": 1.0}


def test_reads_boxes_categories_crowd_and_empty_images(tmp_path):
    path, image_dir = _write(
        tmp_path,
        [_image(42, "a.png"), _image(9, "b.png"), _image(100, "c.png")],
        [_ann(1, 42, 3, [1.5, 2, 10, 5]), _ann(2, 42, 7, [0, 0, 40, 30]),
         _ann(3, 100, 1, [5, 5, 4, 4], iscrowd=1), _ann(4, 100, 7, [1, 1, 2, 2])],
    )
    ds = read_coco(path, image_dir)
    # Labels follow category ids in increasing order and map back through category_ids.
    assert ds.class_names == ("person", "car", "zebra")
    assert ds.category_ids == (1, 3, 7)
    assert [r.source_id for r in ds.records] == [42, 9, 100]
    a, b, c = ds.records
    np.testing.assert_allclose(a.boxes, [[1.5, 2, 11.5, 7], [0, 0, 40, 30]])
    np.testing.assert_array_equal(a.labels, [1, 2])
    assert [ds.category_ids[k] for k in a.labels] == [3, 7]
    assert b.boxes.shape == (0, 4)
    np.testing.assert_array_equal(c.iscrowd, [True, False])
    assert a.path == os.path.join(image_dir, "a.png") and (a.height, a.width) == (30, 40)

    # Crowd boxes are never training targets.
    batch = InputPipeline(ds, batch_size=3, max_boxes=3, min_size=None, max_size=None,
                          shuffle=False, flip=False).build_batch(0)
    np.testing.assert_array_equal(batch["valid"], [[1, 1, 0], [0, 0, 0], [0, 1, 0]])

    kept = read_coco(path, image_dir, keep_empty=False)
    assert [r.source_id for r in kept.records] == [42, 100]


def test_crowd_only_image_counts_as_empty(tmp_path):
    path, image_dir = _write(tmp_path, [_image(1, "a.png")],
                             [_ann(1, 1, 1, [5, 5, 4, 4], iscrowd=1)])
    assert len(read_coco(path, image_dir, keep_empty=True)) == 1
    with pytest.warns(UserWarning, match="only crowd annotations"):
        empty = read_coco(path, image_dir, keep_empty=False)
    with pytest.raises(ValueError):  # nothing left: an empty dataset cannot make a pipeline
        InputPipeline(empty, batch_size=1)


BAD_ANNOTATIONS = {
    "unknown_category": (_ann(5, 2, 99, [1, 1, 2, 2]), ["annotation 1", "id 5", "category_id 99"]),
    "negative_width": (_ann(6, 2, 1, [10, 1, -3, 2]), ["annotation 1", "id 6", "inverted"]),
    "outside_image": (_ann(7, 2, 1, [30, 1, 20, 2]), ["annotation 1", "id 7", "outside"]),
    "malformed_bbox": (_ann(8, 2, 1, [1, 2, 3]), ["annotation 1", "id 8", "malformed bbox"]),
}


@pytest.mark.parametrize("kind", sorted(BAD_ANNOTATIONS))
def test_bad_annotation_raises_naming_file_and_object(tmp_path, kind):
    bad, words = BAD_ANNOTATIONS[kind]
    path, image_dir = _write(tmp_path, [_image(1, "a.png"), _image(2, "b.png")],
                             [_ann(1, 1, 1, [1, 1, 2, 2]), bad])
    with pytest.raises(DataError) as info:
        read_coco(path, image_dir)
    assert "instances.json" in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_skip_policy_drops_bad_images_with_count(tmp_path):
    images = [_image(1, "good.png"), _image(2, "bad.png"), _image(3, "gone.png")]
    annotations = [_ann(1, 1, 1, [1, 1, 2, 2]), _ann(2, 2, 99, [1, 1, 2, 2]),
                   _ann(3, 3, 1, [1, 1, 2, 2]), _ann(4, 555, 1, [1, 1, 2, 2])]
    path, image_dir = _write(tmp_path, images, annotations, missing={"gone.png"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = read_coco(path, image_dir, on_error="skip")
    assert [r.source_id for r in ds.records] == [1]
    assert len(ds.skipped) == 3  # the unknown category, the missing file, the orphan annotation
    messages = " ".join(str(w.message) for w in caught)
    assert "gone.png: image file is missing" in messages
    assert "unknown image 555" in messages
    assert "skipped 2 of 3 images and 1 annotations without an image" in messages


def test_malformed_json_and_wrong_structure(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    with pytest.raises(DataError, match="broken.json: malformed JSON"):
        read_coco(str(path), str(tmp_path))
    path.write_text('{"images": []}')
    with pytest.raises(DataError, match="broken.json: not a COCO instances file"):
        read_coco(str(path), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        read_coco(str(tmp_path / "nowhere.json"), str(tmp_path))


def test_corrupt_image_caught_by_check_images(tmp_path):
    path, image_dir = _write(tmp_path, [_image(1, "a.png")], [_ann(1, 1, 1, [1, 1, 2, 2])])
    with open(os.path.join(image_dir, "a.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n truncated")
    assert len(read_coco(path, image_dir)) == 1  # exists: found only when decoded
    with pytest.raises(DataError, match="a.png: image cannot be decoded"):
        read_coco(path, image_dir, check_images=True)


def test_writer_round_trip(tmp_path):
    config = ShapesConfig(image_size=(40, 56), min_object_size=8, max_object_size=30,
                          classes=("circle", "ring", "cross", "square"))
    ds = make_shapes(6, seed=11, config=config)
    annotation_file = str(tmp_path / "ann" / "instances_val.json")
    write_coco(ds, annotation_file, str(tmp_path / "val"))
    back = read_coco(annotation_file, str(tmp_path / "val"), check_images=True)
    assert back.class_names == ds.class_names and back.category_ids == (1, 2, 3, 4)
    for a, b in zip(ds.records, back.records):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(np.asarray(Image.open(b.path)), a.image)
    gt = dataset_to_coco(ds)
    assert [im["id"] for im in gt["images"]] == list(range(6))
    first = gt["annotations"][0]
    x1, y1, x2, y2 = ds[0].boxes[0]
    assert first["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
    assert first["area"] == pytest.approx((x2 - x1) * (y2 - y1))


def test_box_format_conversions_by_hand_and_round_trip():
    xywh = np.array([[10.0, 20.0, 30.0, 5.5], [0.0, 0.0, 1.0, 1.0]])
    np.testing.assert_array_equal(xywh_to_xyxy(xywh), [[10, 20, 40, 25.5], [0, 0, 1, 1]])
    np.testing.assert_array_equal(xyxy_to_xywh(xywh_to_xyxy(xywh)), xywh)
    assert xyxy_to_xywh(np.zeros((0, 4), np.float32)).shape == (0, 4)


def test_string_and_duplicate_image_ids_are_named_when_read(tmp_path):
    """Found when the file is read, not after training (the evaluation needs integer ids)."""
    path, image_dir = _write(tmp_path, [_image("img_1", "a.png")], [_ann(1, "img_1", 1, [1, 1, 2, 2])])
    with pytest.raises(DataError, match=r"images\[0\] \(a\.png\) has id 'img_1': COCO image ids are integers"):
        read_coco(path, image_dir)
    path, image_dir = _write(tmp_path, [_image(5, "a.png"), _image(6, "b.png"), _image(5, "c.png")],
                             [_ann(1, 5, 1, [1, 1, 2, 2])])
    with pytest.raises(DataError, match=r"images\[2\] \(c\.png\) and images\[0\] \(a\.png\) have the same id 5"):
        read_coco(path, image_dir)


def test_crowd_only_images_left_out_are_explained(tmp_path):
    path, image_dir = _write(tmp_path, [_image(1, "a.png"), _image(2, "b.png")],
                             [_ann(1, 1, 1, [5, 5, 4, 4], iscrowd=1), _ann(2, 2, 1, [1, 1, 2, 2])])
    with pytest.warns(UserWarning, match=r"1 images hold only crowd annotations \(iscrowd=1, e\.g\. a\.png\)"):
        kept = read_coco(path, image_dir, keep_empty=False)
    assert [r.source_id for r in kept.records] == [2]


def test_json_with_a_byte_order_mark_reads(tmp_path):
    path, image_dir = _write(tmp_path, [_image(1, "a.png")], [_ann(1, 1, 1, [1, 1, 2, 2])])
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8-sig") as f:
        f.write(text)
    assert len(read_coco(path, image_dir)) == 1
