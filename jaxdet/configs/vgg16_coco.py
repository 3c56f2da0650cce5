"""Faster R-CNN with VGG16 on COCO: trained on train2017, evaluated on val2017 (COCO AP through pycocotools).

The base (VOC07) recipe with the Faster R-CNN paper's COCO changes (Ren et al. 2015): 80
classes, a fourth anchor scale (64 px, for COCO's small objects), and a longer schedule. The
paper trains on 8 GPUs with 8 images per step (lr 0.003 for 240k steps, then 0.0003 for 80k)
and reports COCO val AP 21.2 and AP50 41.5 for VGG16 (trained on the older train split); this
config keeps that schedule at 8 images per step. The data directory holds
`annotations/instances_{split}.json` and the images in `{split}/`.

    jaxdet train --config vgg16_coco --config.data.root=/data/coco \
        --config.model.pretrained=/weights/vgg16_caffe.pth --config.data.normalization=caffe --workdir runs/coco
    get_config("smoke"): a few steps at 1/4 the image size, for a quick check on a real COCO tree.
"""

import ml_collections

from jaxdet.configs import base


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = base.get_config()
    config.model.anchor_scales = (4, 8, 16, 32)   # 64, 128, 256, 512 px at stride 16
    config.data.dataset = "coco"                  # num_classes 0 (base): the JSON's 80 categories
    config.data.train_splits = ("train2017",)
    config.data.test_split = "val2017"
    config.data.max_boxes = 100                   # COCO images hold up to ~90 non-crowd objects
    config.train.batch_size = 8
    config.train.num_steps = 320000
    config.train.checkpoint_every = 10000
    config.eval.batch_size = 8
    config.optimizer.learning_rate = 3e-3          # for 8 images per step
    config.optimizer.decay_steps = (240000,)
    if variant == "smoke":
        config.data.min_size, config.data.max_size = 150, 250
        config.train.batch_size = config.eval.batch_size = 1
        base.few_steps(config)
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of vgg16_coco (known: 'smoke')")
    return config
