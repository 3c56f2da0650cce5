"""COCO metrics: our conversion plus pycocotools on cases whose AP is known."""

import json

import numpy as np
import pytest

from jaxdet.evaluation import detections_to_coco, eval_detection_coco

CATEGORY_IDS = (1, 3, 7)


def _gt(objects):
    """objects: list of (image_id, category_id, [x1, y1, x2, y2])."""
    images = sorted({o[0] for o in objects} | {10, 20, 99})  # 99 never has objects
    annotations = []
    for k, (image_id, cat, (x1, y1, x2, y2)) in enumerate(objects):
        annotations.append({"id": k + 1, "image_id": image_id, "category_id": cat,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                            "iscrowd": 0})
    return {"images": [{"id": i, "width": 400, "height": 400, "file_name": f"{i}.png"}
                       for i in images],
            "annotations": annotations,
            "categories": [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS]}


OBJECTS = [(10, 1, [10, 10, 60, 60]), (10, 7, [100, 100, 300, 250]), (20, 3, [5, 5, 45, 35])]


def _evaluate(gt, per_image, image_ids=(10, 20, 99)):
    """per_image: image_id -> list of (box, label, score)."""
    boxes = [np.array([d[0] for d in per_image.get(i, [])]).reshape(-1, 4) for i in image_ids]
    labels = [np.array([d[1] for d in per_image.get(i, [])], int) for i in image_ids]
    scores = [np.array([d[2] for d in per_image.get(i, [])]) for i in image_ids]
    return eval_detection_coco(boxes, labels, scores, gt=gt, image_ids=list(image_ids),
                               category_ids=CATEGORY_IDS)


def test_perfect_detections_give_one():
    # Labels are contiguous (0, 1, 2) and map to the sparse category ids (1, 3, 7).
    stats = _evaluate(_gt(OBJECTS), {10: [([10, 10, 60, 60], 0, .9), ([100, 100, 300, 250], 2, .8)],
                                     20: [([5, 5, 45, 35], 1, .7)]})
    for name in ("AP", "AP50", "AP75", "AR100"):
        assert stats[name] == pytest.approx(1.0)


def test_wrong_category_mapping_gives_zero():
    stats = _evaluate(_gt(OBJECTS), {10: [([10, 10, 60, 60], 1, .9), ([100, 100, 300, 250], 0, .8)],
                                     20: [([5, 5, 45, 35], 2, .7)]})
    assert stats["AP"] == 0.0


def test_half_recall_is_51_of_101_points():
    # One of two objects of a class found: precision 1 up to recall 0.5, then nothing;
    # COCO samples 101 recall points, 51 of them (0, 0.01, ..., 0.5) at precision 1.
    gt = _gt([(10, 1, [10, 10, 60, 60]), (20, 1, [5, 5, 45, 35])])
    stats = _evaluate(gt, {10: [([10, 10, 60, 60], 0, .9)]})
    assert stats["AP"] == pytest.approx(51 / 101)
    assert stats["AR100"] == pytest.approx(0.5)


def test_iou_062_counts_for_three_of_ten_thresholds():
    # IoU 0.62 passes thresholds 0.50, 0.55, 0.60 of the ten in 0.50:0.95.
    gt = _gt([(10, 1, [0, 0, 100, 100])])
    stats = _evaluate(gt, {10: [([0, 0, 100, 62], 0, .9)]})
    assert stats["AP50"] == pytest.approx(1.0)
    assert stats["AP75"] == 0.0
    assert stats["AP"] == pytest.approx(0.3)


def test_size_ranges_and_missing_sizes():
    # A small object (20x20 < 32^2) found, a large one (100x100 > 96^2) missed, no medium one.
    gt = _gt([(10, 1, [0, 0, 20, 20]), (10, 1, [200, 200, 300, 300])])
    stats = _evaluate(gt, {10: [([0, 0, 20, 20], 0, .9)]})
    assert stats["APs"] == pytest.approx(1.0)
    assert stats["APl"] == 0.0
    assert stats["APm"] == -1.0


def test_no_detections_and_gt_from_a_file(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(_gt(OBJECTS)))
    stats = _evaluate(str(path), {})
    assert stats["AP"] == 0.0 and stats["results"] == []


def test_conversion_to_coco_results():
    results = detections_to_coco([np.array([[1.5, 2.0, 11.5, 7.0]]), np.zeros((0, 4))],
                                 [np.array([2]), np.zeros(0, int)], [np.array([0.25]), np.zeros(0)],
                                 image_ids=[42, 43], category_ids=CATEGORY_IDS)
    assert results == [{"image_id": 42, "category_id": 7, "bbox": [1.5, 2.0, 10.0, 5.0],
                        "score": 0.25}]
    json.dumps(results)  # plain Python numbers
    with pytest.raises(ValueError, match=r"pred_labels of image 42 must be in \[0, 3\)"):
        detections_to_coco([np.zeros((1, 4))], [np.array([3])], [np.ones(1)], image_ids=[42],
                           category_ids=CATEGORY_IDS)
    with pytest.raises(ValueError, match="image_ids not in the ground truth"):
        _evaluate(_gt(OBJECTS), {}, image_ids=(10, 1234))


def test_a_coco_dataset_is_scored_against_its_own_file_and_ids(tmp_path):
    from PIL import Image

    from jaxdet.data import coco_ground_truth, dataset_to_coco, read_coco

    # Sparse image ids, as COCO's; a 200x150 box whose segment covers only 600 px: "small" by
    # COCO's rule (area < 32^2), though its box is large.
    gt = _gt(OBJECTS)
    gt["annotations"][1]["area"] = 600.0
    for image in gt["images"]:
        Image.new("RGB", (400, 400)).save(tmp_path / image["file_name"])
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(gt))
    dataset = read_coco(str(path), str(tmp_path))
    file, image_ids = coco_ground_truth(dataset)
    assert file == str(path) and sorted(image_ids) == [10, 20, 99]
    # Perfect detections, given per record in the dataset's order.
    boxes = [r.boxes for r in dataset.records]
    labels = [r.labels for r in dataset.records]
    scores = [np.ones(len(r.labels)) for r in dataset.records]
    official = eval_detection_coco(boxes, labels, scores, gt=file, image_ids=image_ids,
                                   category_ids=dataset.category_ids)
    assert official["AP"] == pytest.approx(1.0)
    assert official["APs"] == pytest.approx(1.0)  # the 600 px segment is small
    assert {r["image_id"] for r in official["results"]} == {10, 20}  # the file's ids, not indices
    # The conversion from records knows boxes only: the same object is "large" there.
    converted = eval_detection_coco(boxes, labels, scores, gt=dataset_to_coco(dataset),
                                    image_ids=[r.image_id for r in dataset.records],
                                    category_ids=dataset.category_ids)
    assert converted["APs"] == -1.0
    # A dataset from elsewhere (shapes, VOC) is converted.
    from jaxdet.data import make_shapes

    shapes = make_shapes(2, seed=0)
    gt_dict, ids = coco_ground_truth(shapes)
    assert ids == [0, 1] and len(gt_dict["images"]) == 2
