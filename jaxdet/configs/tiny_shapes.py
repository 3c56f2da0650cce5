"""A tiny Faster R-CNN on the synthetic shapes set (minutes on 2 CPU cores): the tests' model, and the
base of the demo's (`shapes_demo`: RoIAlign and the training settings that found the hardest objects).

128x128 images with 1-4 circles, squares and triangles of 16-80 px; a 4-stage VGG-style trunk
(stride 8, 64 channels), anchors of 16-64 px, a 256-wide two-layer head and Adam. Everything
else is the base recipe, with the proposal and sample counts scaled to the small images.

    get_config()        trains to VOC mAP@0.5 >= 0.9 on held-out images on 2 CPU cores.
    get_config("smoke") 64x64 images, a handful of steps: for tests and quick checks.
    get_config("fast_rcnn"), get_config("fast_rcnn_smoke"): the same without its RPN, a Fast R-CNN
                        (Girshick 2015) on proposals given with the images (`data.proposals`, e.g.
                        selective search's: jaxdet proposals --method selective-search).
"""

import ml_collections

from jaxdet.configs import base

VARIANTS = ("", "smoke", "fast_rcnn", "fast_rcnn_smoke")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = base.get_config()

    config.model.backbone = "tiny_vgg"          # 4 stages (16, 32, 64x2, 64x2 channels), stride 8
    config.model.frozen_stages = 0              # trained from scratch: nothing frozen
    config.model.num_classes = 0                # the class list's: the 3 shapes, or another dataset's own
    config.model.anchor_scales = (2, 4, 8)      # x stride 8: anchors of 16, 32, 64 px
    config.model.rpn_channels = 128
    config.model.head_hidden = (256, 256)
    config.model.dropout_rate = 0.0             # the head is small and the data plentiful

    config.rpn.train_pre_nms = 2000             # of 16 x 16 x 9 = 2304 anchors
    config.rpn.train_post_nms = 300
    config.rpn.test_pre_nms = 1000
    config.rpn.test_post_nms = 100
    config.rpn.min_proposal_size = 4.0          # objects are as small as 16 px
    config.roi.num_samples = 64                 # 1-4 objects need fewer RoIs than VOC

    config.optimizer.name = "adam"              # from scratch, Adam converges in far fewer steps than SGD
    config.optimizer.weight_decay = 0.0
    config.optimizer.warmup_steps = 50
    config.optimizer.warmup_factor = 0.1
    config.optimizer.decay_steps = (1200,)      # x 0.1 for the last fifth of training
    config.optimizer.clip_norm = 10.0           # guards the first steps of a from-scratch RPN

    config.data.dataset = "shapes"
    config.data.root = ""                       # a shapes dataset on disk (jaxdet make-shapes); "": in memory
    config.data.train_splits = ("train",)       # the splits `jaxdet make-shapes` writes
    config.data.test_split = "test"
    config.data.shapes = dict(                  # keyword arguments of jaxdet.data.ShapesConfig
        image_size=(128, 128),
        classes=("circle", "square", "triangle"),
        min_objects=1,
        max_objects=4,
        min_object_size=16,
        max_object_size=80,
    )
    config.data.num_train = 2000                # generated training images
    config.data.num_test = 200                  # held-out images (another seed)
    config.data.train_seed = 0
    config.data.test_seed = 1
    config.data.min_size = None                 # no resize: the images are already small
    config.data.max_size = None
    config.data.max_boxes = 8
    config.data.cache_images = True             # PNG decoding took 12 ms of CPU per batch of 8

    config.train.batch_size = config.eval.batch_size = 8
    config.train.num_steps = 1500
    config.train.log_every = 50
    config.train.checkpoint_every = 500
    config.train.keep_checkpoints = 2

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of tiny_shapes (known: {', '.join(map(repr, VARIANTS[1:]))})")
    if variant.startswith("fast_rcnn"):
        config.model.kind = "fast_rcnn"
        config.data.proposals = ""              # the .npz of [P, 4] boxes per image (jaxdet proposals --out)
        config.data.max_proposals = 300         # selective search gives about 40-100 an image here
    if variant.endswith("smoke"):
        config.data.shapes.image_size = (64, 64)
        config.data.shapes.max_object_size = 40
        config.data.num_train, config.data.num_test = 16, 8
        config.rpn.train_pre_nms, config.rpn.train_post_nms = 300, 64
        config.rpn.test_pre_nms, config.rpn.test_post_nms = 300, 32
        config.roi.num_samples = 32
        if config.model.kind == "fast_rcnn":
            config.data.max_proposals = 64
        config.optimizer.warmup_steps = 0
        config.optimizer.decay_steps = ()
        config.train.batch_size = config.eval.batch_size = 2
        base.few_steps(config)
    return config
