"""The ResNet-FPN Faster R-CNN's parts against hand computations and numpy references (no torch needed):
torchvision's anchors, level mapper, RoIAlign, nearest upsampling, transform; the weights mapping
through a hand-written .pth; a tiny FPN config's detection under one jit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxdet.configs import fasterrcnn_resnet50_fpn_coco
from jaxdet.models import fpn_transform
from jaxdet.models.fpn import nearest_indices, upsample_nearest
from jaxdet.models.fpn_detector import (FPNFasterRCNN, base_anchors, level_anchors, map_levels, model_from_config,
                                        multiscale_roi_align, predict, settings_from_config)
from jaxdet.models.torchvision_detection import _torch_names, load_torchvision_detection
from references.pth_writer import tensor, write_pth


def test_base_anchors_by_hand():
    # size 32, ratio 0.5: w = 32 * sqrt(2) = 45.25, h = 22.63 -> halves 22.63, 11.31 rounded to 23, 11.
    np.testing.assert_array_equal(base_anchors((32,), (0.5, 1.0, 2.0)),
                                  [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]])
    # 2.5 halves round to even as torch.round does: size 5, ratio 1 -> +-2.5 -> +-2.
    np.testing.assert_array_equal(base_anchors((5,), (1.0,)), [[-2, -2, 2, 2]])
    np.testing.assert_array_equal(base_anchors((512,), (1.0,)), [[-256, -256, 256, 256]])


def test_level_anchors_grid_and_torchvision_stride():
    # An 800x1216 canvas: P6 is 13x19, whose row stride torchvision takes as 800 // 13 = 61.
    anchors = level_anchors((800, 1216), [(200, 304), (13, 19)], ((32,), (512,)), (0.5, 1.0, 2.0))
    assert anchors[0].shape == (200 * 304 * 3, 4) and anchors[1].shape == (13 * 19 * 3, 4)
    p2 = anchors[0].reshape(200, 304, 3, 4)
    np.testing.assert_array_equal(p2[0, 0, 1], [-16, -16, 16, 16])
    np.testing.assert_array_equal(p2[2, 5, 0], [5 * 4 - 23, 2 * 4 - 11, 5 * 4 + 23, 2 * 4 + 11])
    p6 = anchors[1].reshape(13, 19, 3, 4)
    np.testing.assert_array_equal(p6[12, 18, 1], [18 * 64 - 256, 12 * 61 - 256, 18 * 64 + 256, 12 * 61 + 256])


def test_level_mapper_by_hand():
    def box(side):
        return [0.0, 0.0, side, side]

    boxes = jnp.asarray([box(224), box(223.9), box(112), box(111.9), box(448), box(1), box(5000), box(56)])
    # floor(4 + log2(side / 224) + 1e-6), clamped to [2, 5], minus 2.
    np.testing.assert_array_equal(map_levels(boxes), [2, 1, 1, 0, 3, 0, 3, 0])


def test_nearest_upsampling_like_torch():
    np.testing.assert_array_equal(nearest_indices(3, 6), [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(nearest_indices(3, 5), [0, 0, 1, 1, 2])  # floor(i * 0.6)
    np.testing.assert_array_equal(nearest_indices(4, 4), [0, 1, 2, 3])
    x = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(1, 2, 3, 4)
    y = upsample_nearest(x, (4, 5))
    np.testing.assert_array_equal(y, np.asarray(x)[:, [0, 0, 1, 1]][:, :, nearest_indices(3, 5)])


def roi_align_reference(feature, roi, scale, pooled, sampling):
    """torchvision's roi_align CPU kernel (aligned=False), one RoI, in float64 loops: feature [H, W, C]."""
    height, width, channels = feature.shape
    start_w, start_h, end_w, end_h = (v * scale for v in roi)
    roi_w, roi_h = max(end_w - start_w, 1.0), max(end_h - start_h, 1.0)
    bin_h, bin_w = roi_h / pooled, roi_w / pooled
    out = np.zeros((pooled, pooled, channels))
    for ph in range(pooled):
        for pw in range(pooled):
            for iy in range(sampling):
                y = start_h + ph * bin_h + (iy + 0.5) * bin_h / sampling
                for ix in range(sampling):
                    x = start_w + pw * bin_w + (ix + 0.5) * bin_w / sampling
                    if y < -1.0 or y > height or x < -1.0 or x > width:
                        continue
                    yy, xx = max(y, 0.0), max(x, 0.0)
                    y0, x0 = int(yy), int(xx)
                    if y0 >= height - 1:
                        y0 = y1 = height - 1
                        yy = float(y0)
                    else:
                        y1 = y0 + 1
                    if x0 >= width - 1:
                        x0 = x1 = width - 1
                        xx = float(x0)
                    else:
                        x1 = x0 + 1
                    ly, lx = yy - y0, xx - x0
                    hy, hx = 1 - ly, 1 - lx
                    out[ph, pw] += (hy * hx * feature[y0, x0] + hy * lx * feature[y0, x1]
                                    + ly * hx * feature[y1, x0] + ly * lx * feature[y1, x1])
            out[ph, pw] /= sampling * sampling
    return out


def test_multiscale_roi_align_against_reference():
    rng = np.random.default_rng(0)
    strides = (4, 8, 16, 32)
    canvas = (128, 160)
    features = [rng.standard_normal((canvas[0] // s, canvas[1] // s, 3)).astype(np.float32) for s in strides]
    rois = np.array([[3.2, 5.1, 40.7, 30.3], [0, 0, 128, 160], [100, 90, 159.5, 127.9], [-3, -2, 10, 9],
                     [20, 20, 20.5, 20.5], [10, 30, 160, 100], [50, 60, 500, 400]], np.float32)
    got = np.asarray(jax.jit(lambda f, r: multiscale_roi_align(f, r, strides=strides, chunk=3))(features, rois))
    levels = np.asarray(map_levels(jnp.asarray(rois)))
    for i, roi in enumerate(rois):
        want = roi_align_reference(features[levels[i]].astype(np.float64), roi, 1.0 / strides[levels[i]], 7, 2)
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5)


def test_multiscale_roi_align_equals_xla_ops_roi_align_per_level():
    xla_ops = pytest.importorskip("xla_ops")
    if not hasattr(xla_ops, "roi_align"):
        pytest.skip("xla_ops.roi_align not available")
    rng = np.random.default_rng(1)
    strides = (4, 8, 16, 32)
    features = [rng.standard_normal((96 // s, 128 // s, 5)).astype(np.float32) for s in strides]
    xy = rng.uniform(-10, 130, (40, 2))
    wh = rng.uniform(1, 300, (40, 2))
    rois = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    got = np.asarray(multiscale_roi_align(features, jnp.asarray(rois), strides=strides))
    levels = np.asarray(map_levels(jnp.asarray(rois)))
    for level, stride in enumerate(strides):
        want = np.asarray(xla_ops.roi_align(jnp.asarray(features[level])[None], jnp.asarray(rois)[None], 7,
                                            1.0 / stride, 2, False, impl="reference"))[0]
        np.testing.assert_allclose(got[levels == level], want[levels == level], rtol=1e-5, atol=1e-5)


def bilinear_reference(image, size):
    """Half-pixel-centre bilinear resize in float64 loops (align_corners=False, source clamped at 0)."""
    h, w = image.shape[:2]
    out = np.zeros((size[0], size[1], image.shape[2]))
    for i in range(size[0]):
        y = max((i + 0.5) * h / size[0] - 0.5, 0.0)
        y0 = min(int(y), h - 1)
        y1 = min(y0 + 1, h - 1)
        ly = y - y0 if y0 < h - 1 else 0.0
        for j in range(size[1]):
            x = max((j + 0.5) * w / size[1] - 0.5, 0.0)
            x0 = min(int(x), w - 1)
            x1 = min(x0 + 1, w - 1)
            lx = x - x0 if x0 < w - 1 else 0.0
            top = image[y0, x0] * (1 - lx) + image[y0, x1] * lx
            bottom = image[y1, x0] * (1 - lx) + image[y1, x1] * lx
            out[i, j] = top * (1 - ly) + bottom * ly
    return out


def test_transform_against_numpy_reference():
    assert fpn_transform.resized_size(480, 640) == ((800, 1066), 800 / 480)
    assert fpn_transform.resized_size(1500, 900)[0] == (1333, 799)  # the long side caps it
    assert fpn_transform.resized_size(300, 451)[0] == (800, 1202)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
    got = fpn_transform.transform_image(image, min_size=50, max_size=80)
    normalised = (image / 255.0 - np.array(fpn_transform.IMAGENET_MEAN)) / np.array(fpn_transform.IMAGENET_STD)
    want = bilinear_reference(normalised, (50, 67))
    assert got.shape == (50, 67, 3)
    np.testing.assert_allclose(got, want, atol=2e-5)
    batch, hw = fpn_transform.pad_batch([got, got[:40, :50]])
    assert batch.shape == (2, 64, 96, 3) and hw.tolist() == [[50, 67], [40, 50]]
    assert np.all(batch[1, 40:] == 0) and np.all(batch[1, :, 50:] == 0)


def tiny_model():
    return model_from_config(fasterrcnn_resnet50_fpn_coco.get_config("tiny").model)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_weights_mapping_through_a_pth(tmp_path, version):
    """Variables -> torchvision names and layouts -> a .pth -> the reader and the mapping -> the same variables."""
    config = fasterrcnn_resnet50_fpn_coco.get_config("tiny", version=version)
    model = model_from_config(config.model)
    variables = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 2, 4)))
    flat = traverse_util.flatten_dict(jax.device_get(variables))
    state, key = {}, 0
    for path, value in flat.items():
        names, leaf = _torch_names(path[1:])
        value = np.asarray(value)
        if leaf == "kernel" and value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)
        elif leaf == "kernel":
            if path[2] in ("fc6", "fc0"):  # NHWC flatten rows back to torch's (C, 7, 7)
                c = model.fpn_channels
                value = value.reshape(7, 7, c, -1).transpose(2, 0, 1, 3).reshape(49 * c, -1)
            value = value.T
        state[names[-1] if version == "v1" and "rpn.head.conv" in names[-1] else names[0]] = tensor(str(key), value)
        key += 1
    path = tmp_path / "tiny.pth"
    write_pth(path, state)
    loaded = load_torchvision_detection(path, model)
    for p, value in traverse_util.flatten_dict(loaded).items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(flat[p]), err_msg="/".join(p))
    assert set(traverse_util.flatten_dict(loaded)) == set(flat)


def test_tiny_fpn_detection_under_one_jit():
    config = fasterrcnn_resnet50_fpn_coco.get_config("tiny")
    model = model_from_config(config.model)
    settings = settings_from_config(config)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8), rng.integers(0, 256, (100, 80, 3), dtype=np.uint8)]
    batch, image_hw = fpn_transform.transform_batch(images, min_size=128, max_size=192)
    assert batch.shape[1] % 32 == 0 and batch.shape[2] % 32 == 0
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 1, 4)))
    # Spread the scores so detections exist.
    params = jax.tree_util.tree_map(lambda x: x, variables)
    kernel = params["params"]["box_predictor"]["cls_score"]["kernel"]
    params["params"]["box_predictor"]["cls_score"]["kernel"] = jax.random.normal(jax.random.PRNGKey(2), kernel.shape)
    out = predict(model, params, jnp.asarray(batch), jnp.asarray(image_hw), settings=settings)
    assert out.proposals.boxes.shape == (2, settings.rpn_post_nms_top_n, 4)
    assert out.detections.boxes.shape == (2, 100, 4)
    det = jax.device_get(out.detections)
    assert det.valid.any()
    for i in range(2):
        h, w = image_hw[i]
        boxes = det.boxes[i][det.valid[i]]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (np.diff(det.scores[i][det.valid[i]]) <= 0).all() and (det.scores[i][det.valid[i]] > 0.05).all()
        assert (det.labels[i][det.valid[i]] < model.num_classes).all()
    props = jax.device_get(out.proposals)
    assert props.valid.sum(axis=1).min() > 0
    before = predict._cache_size()
    predict(model, params, jnp.asarray(batch), jnp.asarray(image_hw), settings=settings)
    assert predict._cache_size() == before  # one compilation per canvas
