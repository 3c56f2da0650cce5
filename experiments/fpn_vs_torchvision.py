"""jaxdet's FPN Faster R-CNN against torchvision's fasterrcnn_resnet50_fpn (v1) and _v2, on photographs.

torchvision builds the model with no pretrained weights, seeded; every batch norm gets random
statistics and scales (as trained weights have: mean N(0, 0.2), var U(0.5, 2), weight U(0.5, 1.5),
bias N(0, 0.2)); v1 is built as torchvision builds it for its COCO weights (FrozenBatchNorm2d,
`overwrite_eps(model, 0.0)`). So that the comparison is not vacuous, the box predictor's class
layer gets weights N(0, 0.008) in v1 and N(0, 0.0025) in v2 (`common.FPN_SCORE_LAYER_STDS`; Linear's default
init gives logits of std ~0.3, near-uniform scores of ~1 / 91 under the 0.05 threshold), so class
logits have a std of ~2 and the scores spread over (0.05, 1): each photograph gives the full 100
detections, the best scoring 0.71-0.90. The RPN keeps torchvision's N(0, 0.01) objectness init (logit std ~1-5 on
these features: spread sigmoid scores; a larger init saturates them at 1.0 in float32 and turns the
top-k and NMS order into ties), its box layer gets N(0, 0.001). The state dict is written with torch.save and read by
jaxdet's torch-free reader (`jaxdet.models.torch_checkpoint`), mapped by
`jaxdet.models.torchvision_detection`; images go through torchvision's transform on one side and
`jaxdet.models.fpn_transform` on the other (checked equal), then both models run at test time.

Reported per image: the transform's largest difference, the FPN features' largest relative
difference, and for the RPN proposals and the final detections the fraction of each side's boxes
that find one on the other side with the same class (proposals: no class), IoU >= 0.98 and score
within 1e-3. Unmatched boxes are listed with the reason found (a tie of NMS or of the top-k cut).

    PYTHONPATH=. python experiments/fpn_vs_torchvision.py --variant v1 --variant v2
"""

import argparse
import io
import platform
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torchvision
from torchvision.models.detection.transform import resize_boxes

from common import torchvision_fpn_model as torch_model
from jaxdet.configs import load_config
from jaxdet.models.fpn_detector import model_from_config, predict, settings_from_config
from jaxdet.models.fpn_transform import transform_batch
from jaxdet.models.torchvision_detection import load_torchvision_detection

IOU_MIN = 0.98
SCORE_TOL = 1e-3


CONFIGS = {"v1": "fasterrcnn_resnet50_fpn_coco", "v2": "fasterrcnn_resnet50_fpn_v2_coco"}


def jax_model(variant):
    """The FPNFasterRCNN of torchvision's fasterrcnn_resnet50_fpn (COCO weights' eps 0) or _v2, as its
    config builds it (COCO's 90 slots)."""
    return model_from_config(load_config(CONFIGS[variant]).model)


def photographs(names):
    """skimage.data photographs as uint8 [H, W, 3]."""
    import skimage.data
    out = {}
    for name in names:
        image = getattr(skimage.data, name)()
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        out[name] = np.ascontiguousarray(image[..., :3])
    return out


def iou_matrix(a, b):
    """[n, 4], [m, 4] xyxy -> [n, m] IoU (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match(boxes_a, scores_a, labels_a, boxes_b, scores_b, labels_b):
    """[n] bool: does each of a's boxes find one of b's with the same label, IoU >= 0.98, |score diff| <= 1e-3."""
    if len(boxes_a) == 0:
        return np.zeros(0, bool)
    if len(boxes_b) == 0:
        return np.zeros(len(boxes_a), bool)
    iou = iou_matrix(boxes_a, boxes_b)
    ok = (iou >= IOU_MIN) & (np.abs(scores_a[:, None] - scores_b[None, :]) <= SCORE_TOL) \
        & (labels_a[:, None] == labels_b[None, :])
    return ok.any(axis=1)


def torch_run(model, image):
    """torchvision's proposals (resized-image pixels) and detections (original pixels) for one image."""
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255).contiguous()
    captured = {}

    def keep_proposals(module, args, output):
        captured["proposals"] = output[0][0]

    hooks = [model.rpn.register_forward_hook(keep_proposals)]
    original_filter = model.rpn.filter_proposals

    def filter_proposals(*args, **kwargs):
        boxes, scores = original_filter(*args, **kwargs)
        captured["scores"] = scores[0]
        return boxes, scores

    model.rpn.filter_proposals = filter_proposals
    images, _ = model.transform([x])
    captured["transformed"] = images.tensors[0].permute(1, 2, 0).numpy()
    captured["image_size"] = images.image_sizes[0]
    with torch.no_grad():
        features = model.backbone(images.tensors)
        captured["features"] = {k: v[0].permute(1, 2, 0).numpy() for k, v in features.items()}
        start = time.perf_counter()
        out = model([x])[0]
        captured["seconds"] = time.perf_counter() - start
    model.rpn.filter_proposals = original_filter
    for hook in hooks:
        hook.remove()
    return captured, {k: v.numpy() for k, v in out.items()}


def compare(variant, images, *, seed=0, verbose=True):
    """Runs both sides on each image; returns one dict of figures per image."""
    tmodel = torch_model(variant, seed)
    buffer = io.BytesIO()
    torch.save(tmodel.state_dict(), buffer)
    buffer.seek(0)
    model = jax_model(variant)
    variables = load_torchvision_detection(buffer, model)
    settings = settings_from_config(load_config(CONFIGS[variant]))
    rows = []
    for name, image in images.items():
        captured, tout = torch_run(tmodel, image)
        batch, image_hw = transform_batch([image])
        h, w = captured["image_size"]
        transform_diff = float(np.abs(batch[0, :h, :w] - captured["transformed"][:h, :w]).max()) \
            if batch.shape[1:3] == captured["transformed"].shape[:2] else float("nan")
        if batch.shape[1:3] != captured["transformed"].shape[:2] or tuple(image_hw[0]) != (h, w):
            raise AssertionError(f"{name}: canvas {batch.shape[1:3]} / size {tuple(image_hw[0])} where torchvision "
                                 f"has {captured['transformed'].shape[:2]} / {(h, w)}")
        feats = model.apply(variables, jnp.asarray(batch), method=model.extract)
        feat_rel = max(float(np.abs(np.asarray(f[0]) - t).max() / max(np.abs(t).max(), 1e-12))
                       for f, t in zip(feats, captured["features"].values()))
        start = time.perf_counter()
        out = jax.block_until_ready(predict(model, variables, jnp.asarray(batch), jnp.asarray(image_hw),
                                            settings=settings))
        first = time.perf_counter() - start
        start = time.perf_counter()
        out = jax.block_until_ready(predict(model, variables, jnp.asarray(batch), jnp.asarray(image_hw),
                                            settings=settings))
        seconds = time.perf_counter() - start
        prop = jax.tree_util.tree_map(lambda x: np.asarray(x[0]), out.proposals)
        det = jax.tree_util.tree_map(lambda x: np.asarray(x[0]), out.detections)
        jp_boxes, jp_scores = prop.boxes[prop.valid], prop.scores[prop.valid]
        tp_boxes = captured["proposals"].numpy()
        tp_scores = captured["scores"].numpy()
        zeros_j, zeros_t = np.zeros(len(jp_boxes), int), np.zeros(len(tp_boxes), int)
        prop_t = match(tp_boxes, tp_scores, zeros_t, jp_boxes, jp_scores, zeros_j)
        prop_j = match(jp_boxes, jp_scores, zeros_j, tp_boxes, tp_scores, zeros_t)
        # Detections in original pixels, scaled as torchvision's postprocess (resize_boxes) does.
        jd_boxes = resize_boxes(torch.from_numpy(det.boxes[det.valid]), (h, w), image.shape[:2]).numpy()
        jd_scores, jd_labels = det.scores[det.valid], det.labels[det.valid] + 1
        td_boxes, td_scores, td_labels = tout["boxes"], tout["scores"], tout["labels"]
        det_t = match(td_boxes, td_scores, td_labels, jd_boxes, jd_scores, jd_labels)
        det_j = match(jd_boxes, jd_scores, jd_labels, td_boxes, td_scores, td_labels)
        row = dict(image=name, size=f"{image.shape[0]}x{image.shape[1]}", resized=f"{h}x{w}",
                   canvas=f"{batch.shape[1]}x{batch.shape[2]}", transform_diff=transform_diff, feature_rel=feat_rel,
                   proposals=(len(tp_boxes), len(jp_boxes)), proposals_matched=(prop_t.mean(), prop_j.mean()),
                   detections=(len(td_boxes), len(jd_boxes)),
                   detections_matched=(det_t.mean() if len(det_t) else 1.0, det_j.mean() if len(det_j) else 1.0),
                   unmatched=_explain(td_boxes, td_scores, td_labels, det_t, jd_boxes, jd_scores, jd_labels, det_j),
                   proposals_unmatched=(int((~prop_t).sum()), int((~prop_j).sum())),
                   top_score=float(td_scores.max()) if len(td_scores) else 0.0,
                   torch_seconds=captured["seconds"], jax_seconds=seconds, jax_first_seconds=first)
        rows.append(row)
        if verbose:
            print(format_row(variant, row), flush=True)
    return rows


def _explain(tb, ts, tl, tm, jb, js, jl, jm):
    """Unmatched detections: (side, label, score, best same-class IoU on the other side, its score)."""
    out = []
    for side, (b, s, l, m, ob, os_, ol) in (("torch", (tb, ts, tl, tm, jb, js, jl)),
                                           ("jax", (jb, js, jl, jm, tb, ts, tl))):
        for i in np.flatnonzero(~m):
            same = ol == l[i]
            best_iou, best_score = 0.0, float("nan")
            if same.any():
                iou = iou_matrix(b[i:i + 1], ob[same])[0]
                k = int(iou.argmax())
                best_iou, best_score = float(iou[k]), float(os_[same][k])
            out.append((side, int(l[i]), float(s[i]), best_iou, best_score))
    return out


def format_row(variant, r):
    return (f"{variant} {r['image']:>10} {r['size']:>8} -> {r['resized']:>9} (canvas {r['canvas']}): "
            f"transform max|d| {r['transform_diff']:.2g}, features rel {r['feature_rel']:.2g}; "
            f"proposals {r['proposals'][0]}/{r['proposals'][1]} matched {r['proposals_matched'][0]:.4f}/"
            f"{r['proposals_matched'][1]:.4f}; detections {r['detections'][0]}/{r['detections'][1]} matched "
            f"{r['detections_matched'][0]:.4f}/{r['detections_matched'][1]:.4f} (top score {r['top_score']:.3f}); "
            f"unmatched {r['unmatched']}; torch {r['torch_seconds']:.1f} s, jax {r['jax_seconds']:.1f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", choices=("v1", "v2"))
    parser.add_argument("--images", nargs="*", default=["astronaut", "coffee", "chelsea", "rocket"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, jax {jax.__version__}; CPU {cpu}; "
          f"{platform.python_version()}", flush=True)
    images = photographs(args.images)
    for variant in args.variant or ["v1", "v2"]:
        compare(variant, images, seed=args.seed)


if __name__ == "__main__":
    main()
