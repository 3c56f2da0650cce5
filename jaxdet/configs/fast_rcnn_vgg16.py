"""Fast R-CNN with VGG16 on PASCAL VOC 2007 with proposals given per image (Girshick 2015).

The paper's Fast R-CNN recipe: 2 images per step, 64 RoIs each (25% foreground at IoU >= 0.5,
background in [0.1, 0.5)), lr 1e-3 for 30k steps then 1e-4 to 40k, conv1-conv2 frozen. The RoIs
(selective search, or boxes saved from an RPN) come from `data.proposals`, a file with one
[P, 4] xyxy array per image; batches then carry "proposals" [B, P, 4] and "proposal_valid".

    jaxdet train --config fast_rcnn_vgg16 --config.data.root=/data/VOCdevkit --config.data.proposals=FILE
    get_config("smoke"): a few steps at 1/4 the image size.
"""

import ml_collections

from jaxdet.configs import base


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = base.get_config()
    config.model.kind = "fast_rcnn"
    config.roi.num_samples = 64             # RoIs per image (2 images: 128 per step)
    config.roi.background_iou = (0.1, 0.5)  # Fast R-CNN's background range
    config.optimizer.decay_steps = (30000,)
    config.train.batch_size = config.eval.batch_size = 2
    config.train.num_steps = 40000
    config.data.proposals = ""              # file of per-image proposals (xyxy, original pixels)
    config.data.max_proposals = 2000        # proposals padded / truncated to this per image
    if variant == "smoke":
        config.data.min_size, config.data.max_size = 150, 250
        config.data.max_proposals = 64
        base.few_steps(config)
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of fast_rcnn_vgg16 (known: 'smoke')")
    return config
