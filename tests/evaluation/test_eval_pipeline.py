"""The evaluation path end to end with an oracle in place of the network.

`jaxdet.inference.dataset.predict` is replaced by a fake that returns, for each batch, chosen
detections of that batch's records (in the batch's input pixels: original boxes times the batch's
`image_scale`, fixed size with a valid mask, as the real `predict` returns them). `evaluation.evaluate`
then batches the images, maps the boxes back to the original pixels (`boxes_to_original`), turns
them into per-image lists and scores them, so what it reports can be checked against what the
fake was given:

  the ground truth itself           VOC07 mAP = VOC area mAP = COCO AP = 1
  the ground truth, labels shifted  0 (every box is on an object of another class)
  jittered ground truth, random     the devkit transcription of references/voc_devkit.py (VOC) and
  scores, duplicates                pycocotools (COCO) on the same detections in original pixels

Both a config without resizing (image_scale 1) and one that resizes non-square images by 1.5
(min_size set) are run, so a wrong mapping back to the original pixels (none, the scale applied
the wrong way, the axes swapped) fails the oracle: a box 1.5 times too large or small overlaps
its object with IoU at most 1/1.5^2 = 0.44 (less unless it touches the origin), and COCO AP's
IoU 0.95 leaves room for well under a pixel on these 16-32 px objects.
"""

import jax
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jaxdet.overrides import load_config
from jaxdet.data import ShapesConfig, dataset_to_coco, make_shapes
from jaxdet.data.transforms import resized_hw
from jaxdet.ops.nms import Detections
from jaxdet.evaluation import run as evaluation
from jaxdet.inference import dataset as detection
from jaxdet.training.state import create_train_state
from references.voc_devkit import devkit_class_ap

NUM_IMAGES = 8
SLOTS = 16  # detections per image in the fake's fixed-size output (objects per image: at most 4, x2)


def _config(resized: bool):
    config = load_config("tiny_shapes:smoke")
    config.eval = dict(batch_size=3)  # 8 images: a last batch with a filler slot
    if resized:
        # (48, 64) -> (72, 96): scale 1.5 on both axes exactly, so the fake's boxes x image_scale
        # are the input pixels the pipeline's resize gives (no rounding of the size).
        config.data.shapes.image_size = (48, 64)
        config.data.shapes.max_object_size = 32
        config.data.min_size, config.data.max_size = 72, 200
    return config


@pytest.fixture(scope="module")
def state():
    # The fake never runs the network: any state of the model serves (its step, its devices).
    return create_train_state(_config(False), jax.random.key(0))


def _dataset(config):
    return make_shapes(NUM_IMAGES, seed=int(config.data.test_seed), config=ShapesConfig(**dict(config.data.shapes)))


def _install_fake(monkeypatch, config, dataset, detections_of):
    """Replaces detection.predict: batch after batch in dataset order, `detections_of(index, record)`
    -> (boxes [n, 4] original pixels, labels [n], scores [n]) for each real slot."""
    records = list(dataset.records)
    seen = {"next": 0, "calls": 0}

    def fake_predict(model, variables, images, image_hw, *, image_scale=None, proposals=None,
                     proposal_valid=None, settings=None):
        image_hw = np.asarray(image_hw)
        image_scale = np.asarray(image_scale)
        n = images.shape[0]
        boxes = np.zeros((n, SLOTS, 4), np.float32)
        scores = np.zeros((n, SLOTS), np.float32)
        labels = np.zeros((n, SLOTS), np.int32)
        valid = np.zeros((n, SLOTS), bool)
        for slot in range(n):
            index = seen["next"] + slot
            if index >= len(records):
                assert tuple(image_hw[slot]) == (0, 0)  # a filler slot of the last batch
                continue
            record = records[index]
            height, width, scale = resized_hw(record.height, record.width, min_size=config.data.min_size,
                                              max_size=config.data.max_size)
            assert tuple(image_hw[slot]) == (height, width) and image_scale[slot] == pytest.approx(scale)
            b, l, s = detections_of(index, record)
            k = len(l)
            boxes[slot, :k] = np.asarray(b, np.float32) * image_scale[slot]
            labels[slot, :k], scores[slot, :k], valid[slot, :k] = l, s, True
        seen["next"] += n
        seen["calls"] += 1
        return Detections(boxes=boxes, scores=scores, labels=labels, valid=valid)

    monkeypatch.setattr(detection, "predict", fake_predict)
    return seen


def _evaluate(monkeypatch, tmp_path, state, resized, detections_of):
    config = _config(resized)
    dataset = _dataset(config)
    seen = _install_fake(monkeypatch, config, dataset, detections_of)
    metrics = evaluation.evaluate(config, state, dataset, str(tmp_path), show_progress=False)
    assert seen == {"next": 9, "calls": 3}  # 3 batches of 3 over 8 images
    assert metrics["eval_images"] == NUM_IMAGES
    return dataset, metrics


@pytest.mark.parametrize("resized", [False, True], ids=["no_resize", "resized_x1.5"])
def test_the_ground_truth_scores_one(resized, state, tmp_path, monkeypatch):
    dataset, metrics = _evaluate(monkeypatch, tmp_path, state, resized,
                                 lambda i, r: (r.boxes, r.labels, np.ones(len(r.labels))))
    if resized:
        assert dataset.records[0].height == 48 and dataset.records[0].width == 64
    for key in ("voc07_map", "voc_map", "coco_ap", "coco_ap50", "coco_ap75"):
        assert metrics[key] == pytest.approx(1.0, abs=1e-6), key
    assert all(ap == pytest.approx(1.0, abs=1e-6) for ap in metrics["per_class_ap"].values())


def test_the_ground_truth_with_shifted_labels_scores_zero(state, tmp_path, monkeypatch):
    _, metrics = _evaluate(monkeypatch, tmp_path, state, True,
                           lambda i, r: (r.boxes, (r.labels + 1) % 3, np.ones(len(r.labels))))
    for key in ("voc07_map", "voc_map", "coco_ap", "coco_ap50"):
        assert metrics[key] == pytest.approx(0.0, abs=1e-6), key


def _jittered(dataset, seed=0):
    """Per record: each object found once with its box jittered (some beyond IoU 0.5), some twice,
    random scores; boxes in original pixels, inside the image."""
    rng = np.random.default_rng(seed)
    found = []
    for record in dataset.records:
        boxes = np.concatenate([record.boxes, record.boxes[: rng.integers(0, len(record.boxes) + 1)]])
        labels = np.concatenate([record.labels, record.labels[: len(boxes) - len(record.boxes)]])
        size = np.tile(boxes[:, 2:] - boxes[:, :2], (1, 2))  # (w, h, w, h)
        jittered = boxes + rng.normal(0.0, 0.12, boxes.shape) * size
        jittered = np.concatenate([np.minimum(jittered[:, :2], jittered[:, 2:]),
                                   np.maximum(jittered[:, :2], jittered[:, 2:])], axis=1)
        jittered = np.clip(jittered, 0, [record.width, record.height, record.width, record.height])
        found.append((jittered.astype(np.float32), labels.astype(np.int32),
                      rng.uniform(0.05, 1.0, len(labels)).astype(np.float32)))
    return found


@pytest.mark.parametrize("resized", [False, True], ids=["no_resize", "resized_x1.5"])
def test_jittered_detections_score_as_the_devkit_and_pycocotools_say(resized, state, tmp_path, monkeypatch):
    dataset = _dataset(_config(resized))
    found = _jittered(dataset)
    _, metrics = _evaluate(monkeypatch, tmp_path, state, resized, lambda i, r: found[i])
    boxes, labels, scores = ([f[k] for f in found] for k in range(3))
    gt = [r.boxes for r in dataset.records], [r.labels for r in dataset.records]
    ignored = [r.difficult | r.iscrowd for r in dataset.records]
    for key, use_07 in (("voc07_map", True), ("voc_map", False)):
        per_class = [devkit_class_ap(c, boxes, labels, scores, *gt, ignored, use_07) for c in range(3)]
        assert metrics[key] == pytest.approx(np.nanmean(per_class), abs=1e-6), key
        if use_07:
            assert list(metrics["per_class_ap"].values()) == pytest.approx(per_class, abs=1e-6)
    assert 0.2 < metrics["voc07_map"] < 0.95  # hits and misses: not a trivial case

    coco = COCO()
    coco.dataset = dataset_to_coco(dataset)
    coco.createIndex()
    results = [{"image_id": record.image_id, "category_id": dataset.category_ids[int(label)],
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "score": float(score)}
               for record, (b, l, s) in zip(dataset.records, found)
               for (x1, y1, x2, y2), label, score in zip(b, l, s)]
    evaluator = COCOeval(coco, coco.loadRes(results), iouType="bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert metrics["coco_ap"] == pytest.approx(evaluator.stats[0], abs=1e-6)
    assert metrics["coco_ap50"] == pytest.approx(evaluator.stats[1], abs=1e-6)
    assert 0.05 < metrics["coco_ap"] < 0.9
