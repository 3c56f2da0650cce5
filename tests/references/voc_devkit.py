"""Pascal VOC's devkit evaluation (VOCevaldet.m) transcribed line by line in numpy: the independent
reference the VOC AP of `jaxdet.evaluation` is checked against.

It works on VOC's inclusive integer pixel indices with the devkit's +1, so boxes are given to it
as (x1 + 1, y1 + 1, x2, y2), and it walks all detections of a class in one global score order,
looping over every ground-truth object of the detection's image.
"""

import numpy as np


def devkit_class_ap(cls, pred_boxes, pred_labels, pred_scores, gt_boxes, gt_labels, gt_diff,
                    use_07):
    gt = []
    npos = 0
    for boxes, labels, diff in zip(gt_boxes, gt_labels, gt_diff):
        keep = labels == cls
        bb = boxes[keep].copy()
        bb[:, :2] += 1
        gt.append({"BB": bb, "diff": diff[keep], "det": np.zeros(keep.sum(), bool)})
        npos += int(np.sum(~diff[keep]))
    ids, confidence, bbs = [], [], []
    for i, (boxes, labels, scores) in enumerate(zip(pred_boxes, pred_labels, pred_scores)):
        for box, label, score in zip(boxes, labels, scores):
            if label == cls:
                b = box.copy()
                b[:2] += 1
                ids.append(i)
                confidence.append(score)
                bbs.append(b)
    si = np.argsort(-np.array(confidence), kind="stable")  # MATLAB's sort is stable
    nd = len(si)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        i = ids[si[d]]
        bb = bbs[si[d]]
        ovmax, jmax = -np.inf, -1
        for j in range(len(gt[i]["BB"])):
            bbgt = gt[i]["BB"][j]
            bi = [max(bb[0], bbgt[0]), max(bb[1], bbgt[1]), min(bb[2], bbgt[2]),
                  min(bb[3], bbgt[3])]
            iw = bi[2] - bi[0] + 1
            ih = bi[3] - bi[1] + 1
            if iw > 0 and ih > 0:
                ua = ((bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)
                      + (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1) - iw * ih)
                ov = iw * ih / ua
                if ov > ovmax:
                    ovmax, jmax = ov, j
        if ovmax >= 0.5:
            if not gt[i]["diff"][jmax]:
                if not gt[i]["det"][jmax]:
                    tp[d] = 1
                    gt[i]["det"][jmax] = True
                else:
                    fp[d] = 1
        else:
            fp[d] = 1
    if npos == 0:
        return np.nan
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / npos
    with np.errstate(invalid="ignore"):
        prec = tp / (fp + tp)  # MATLAB: NaN at 0/0, which max() then ignores
    if use_07:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = prec[rec >= t]
            p = p[~np.isnan(p)]
            ap += (p.max() if len(p) else 0.0) / 11
        return ap
    mrec = np.concatenate([[0], rec, [1]])
    mpre = np.concatenate([[0], np.nan_to_num(prec), [0]])
    for k in range(len(mpre) - 2, -1, -1):
        mpre[k] = max(mpre[k], mpre[k + 1])
    idx = [k + 1 for k in range(len(mrec) - 1) if mrec[k + 1] != mrec[k]]
    return sum((mrec[k] - mrec[k - 1]) * mpre[k] for k in idx)
