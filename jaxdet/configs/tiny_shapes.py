"""A tiny Faster R-CNN on the synthetic shapes set: the CPU demo (minutes on 2 cores) and tests.

128x128 images with 1-4 circles, squares and triangles of 16-80 px; a 4-stage VGG-style trunk
(stride 8, 64 channels), anchors of 16-64 px, a 256-wide two-layer head and Adam. Everything
else follows the paper's recipe, with the proposal and sample counts scaled to the small images.

    get_config()        the demo: trains to VOC mAP@0.5 >= 0.9 on held-out images on 2 CPU cores.
    get_config("smoke") 64x64 images, a handful of steps: for tests and quick checks.
"""

import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    config.model = dict(
        kind="faster_rcnn",          # "faster_rcnn" or "fast_rcnn"
        backbone="tiny_vgg",         # 4 stages (16, 32, 64x2, 64x2 channels), stride 8
        frozen_stages=0,             # trained from scratch: nothing frozen
        num_classes=3,               # circle, square, triangle
        anchor_scales=(2, 4, 8),     # x stride 8: anchors of 16, 32, 64 px
        anchor_ratios=(0.5, 1.0, 2.0),  # height / width
        rpn_channels=128,            # width of the RPN's 3x3 conv
        pooled_size=(7, 7),          # RoI pooling output
        roi_rounding="none",         # RoI pooling arithmetic (seed kernel)
        head_hidden=(256, 256),      # fc6, fc7 widths
        dropout_rate=0.0,            # no dropout: the head is small and the data plentiful
        compute_dtype="float32",     # "float32" or "bfloat16"
        pretrained="",               # no pretrained weights for the tiny trunk
    )

    config.rpn = dict(
        num_samples=256,             # anchors sampled per image for the RPN loss
        positive_fraction=0.5,
        positive_iou=0.7,
        negative_iou=0.3,
        allowed_border=0.0,
        sigma=3.0,
        train_pre_nms=2000,          # of 16 x 16 x 9 = 2304 anchors
        train_post_nms=300,
        test_pre_nms=1000,
        test_post_nms=100,
        nms_iou=0.7,
        min_size=4.0,                # objects are as small as 16 px
    )

    config.roi = dict(
        num_samples=64,              # RoIs sampled per image: 1-4 objects need fewer than VOC
        foreground_fraction=0.25,
        foreground_iou=0.5,
        background_iou=(0.0, 0.5),
        box_stds=(0.1, 0.1, 0.2, 0.2),
        sigma=1.0,
    )

    config.loss = dict(
        box_normalization="samples",  # box losses / sampled anchors or RoIs (py-faster-rcnn), or
                                      # "positives" (seed 001's N_reg, with rpn_box_weight=10)
        rpn_box_weight=1.0,          # weight of the RPN box loss in the total
        roi_box_weight=1.0,          # weight of the RoI-head box loss in the total
    )

    config.test = dict(
        score_threshold=0.05,
        nms_iou=0.3,
        max_detections=100,
    )

    config.optimizer = dict(
        name="adam",                 # from scratch, Adam converges in far fewer steps than SGD
        learning_rate=1e-3,
        momentum=0.9,                # (sgd only)
        weight_decay=0.0,
        warmup_steps=50,
        warmup_factor=0.1,
        decay_steps=(1200,),         # x 0.1 for the last fifth of training
        decay_factor=0.1,
        clip_norm=10.0,              # guards the first steps of a from-scratch RPN
    )

    config.data = dict(
        dataset="shapes",
        root="",                     # a shapes dataset on disk (jaxdet make-shapes); "": generated in memory
        shapes=dict(                 # keyword arguments of jaxdet.data.ShapesConfig
            image_size=(128, 128),
            classes=("circle", "square", "triangle"),
            min_objects=1,
            max_objects=4,
            min_object_size=16,
            max_object_size=80,
        ),
        num_train=2000,              # generated training images
        num_test=200,                # held-out images (another seed)
        train_seed=0,
        test_seed=1,
        min_size=None,               # no resize: the images are already small
        max_size=None,
        flip=True,
        normalization="torchvision",
        max_boxes=8,
        on_error="raise",            # a bad image or annotation: "raise" stops, naming it; "skip" drops
                                     # the image and names it in a warning with the count
        check_images=False,          # decode every image while reading the dataset (slow), so that a
                                     # corrupt one is found (and skipped) before training, not during it
    )

    config.train = dict(
        batch_size=8,
        num_steps=1500,
        seed=0,
        log_every=50,
        checkpoint_every=500,
        keep_checkpoints=2,
    )

    if variant == "smoke":
        config.data.shapes.image_size = (64, 64)
        config.data.shapes.max_object_size = 40
        config.data.num_train, config.data.num_test = 16, 8
        config.rpn.train_pre_nms, config.rpn.train_post_nms = 300, 64
        config.rpn.test_pre_nms, config.rpn.test_post_nms = 300, 32
        config.roi.num_samples = 32
        config.optimizer.warmup_steps = 0
        config.optimizer.decay_steps = ()
        config.train.batch_size = 2
        config.train.num_steps = 4
        config.train.log_every = 1
        config.train.checkpoint_every = 2
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of tiny_shapes (known: 'smoke')")
    return config
