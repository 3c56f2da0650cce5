"""The base config: Faster R-CNN with VGG16 on PASCAL VOC 2007, the paper's recipe (Ren et al. 2015).

Every other config starts from `get_config()` here and changes only what differs (as the
configs of flax's examples/imagenet do), so each field is defined and explained once, here.

Approximate joint training (end to end), ImageNet-pretrained VGG16 with conv1-conv2 frozen,
short side 600 / long side at most 1000, horizontal flip, SGD momentum 0.9, weight decay 5e-4,
lr 1e-3 for 50k steps then 1e-4 to 70k (at 1 image per step; with more images per step scale
the learning rate linearly and the steps inversely). The paper reports 69.9 mAP (VOC07 11-point
metric); the reference ports (py-faster-rcnn, torchvision) 70.0-71.2.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    config.model = dict(
        kind="faster_rcnn",          # "faster_rcnn" (RPN proposals) or "fast_rcnn" (given proposals)
        backbone="vgg16",            # vgg16 | vgg16_bn | tiny_vgg | resnet50_c4 | resnet101_c4 | resnet152_c4 | tiny_resnet_c4
        frozen_stages=2,             # conv1-conv2 frozen, as the reference recipes
        num_classes=0,               # object classes K (the head predicts K + 1, background 0); 0: as many
                                     # as the class list (data.classes), here VOC's 20
        anchor_scales=(8, 16, 32),   # anchor sizes in units of the stride (16): 128, 256, 512 px
        anchor_ratios=(0.5, 1.0, 2.0),  # height / width
        rpn_channels=512,            # width of the RPN's 3x3 conv
        pooled_size=(7, 7),          # RoI pooling output, fc6's input grid
        roi_op="pool",               # "pool": RoI max pooling (Fast R-CNN); "align": RoIAlign (Mask R-CNN,
                                     # torchvision's and detectron2's default heads)
        roi_rounding="none",         # RoI pooling's arithmetic: "none" (coordinates scaled, not rounded:
                                     # the Faster R-CNN CUDA kernel), "round" (Caffe, torchvision) or
                                     # "adaptive" (adaptive max pooling of each RoI's crop)
        roi_sampling_ratio=2,        # RoIAlign: samples per bin along each axis; <= 0: ceil(roi / bin)
        roi_aligned=False,           # RoIAlign: half-pixel offset (detectron2's aligned=True)
        head_hidden=(4096, 4096),    # fc6, fc7 widths (VGG16's classifier)
        dropout_rate=0.5,            # dropout after fc6 and fc7 in training (VGG16's classifier)
        compute_dtype="float32",     # "float32" or "bfloat16" (parameters and losses stay float32;
                                     # flax's nn.Conv / nn.Dense compute in it)
        cpu_bf16_kernels=False,      # with bfloat16 on a CPU with AMX tiles: the layers of xla_ops.amx
                                     # (bfloat16 operands, float32 results; AMX kernel) instead of flax's
        pretrained="",               # local VGG16 state dict (.pth, .npz, .safetensors); "" = random init
    )

    config.rpn = dict(
        num_samples=256,             # anchors sampled per image for the RPN loss
        positive_fraction=0.5,       # at most half of them positive
        positive_iou=0.7,            # IoU >= 0.7 with a ground-truth box: positive
        negative_iou=0.3,            # max IoU < 0.3: negative
        allowed_border=0.0,          # anchors crossing the border by more than this are ignored
        sigma=3.0,                   # smooth-L1 sigma of the RPN box loss
        train_pre_nms=12000,         # proposals kept before NMS in training
        train_post_nms=2000,         # ... after NMS in training
        test_pre_nms=6000,           # ... before NMS at test time
        test_post_nms=300,           # ... after NMS at test time
        nms_iou=0.7,                 # proposal NMS threshold
        min_proposal_size=16.0,      # proposals smaller than this (original pixels) are dropped
    )

    config.roi = dict(
        num_samples=128,             # RoIs sampled per image for the head loss
        foreground_fraction=0.25,    # at most 25% foreground
        foreground_iou=0.5,          # IoU >= 0.5: foreground
        background_iou=(0.0, 0.5),   # IoU in [lo, hi): background
        box_stds=(0.1, 0.1, 0.2, 0.2),  # regression targets divided by these (and predictions multiplied)
        sigma=1.0,                   # smooth-L1 sigma of the head box loss
    )

    config.loss = dict(
        box_normalization="samples",  # box losses / sampled anchors or RoIs (py-faster-rcnn), or
                                      # "positives" (the step-by-step tutorials' reading of the paper's
                                      # lambda = 10 normalisation, with rpn_box_weight=10; the paper's
                                      # N_reg counts anchor locations)
        rpn_box_weight=1.0,          # weight of the RPN box loss in the total
        roi_box_weight=1.0,          # weight of the RoI-head box loss in the total
    )

    config.test = dict(
        score_threshold=0.05,        # detections scoring at or below are dropped
        nms_iou=0.3,                 # per-class NMS threshold
        max_detections=100,          # detections kept per image
    )

    config.optimizer = dict(
        name="sgd",                  # "sgd" (momentum) or "adam"
        learning_rate=1e-3,          # base learning rate (for batch_size 1)
        momentum=0.9,
        weight_decay=5e-4,           # L2 on kernels only (not biases or norm scales)
        warmup_steps=0,              # linear warm-up steps (the paper has none)
        warmup_factor=1.0 / 3,       # warm-up starts at this fraction of the base rate
        decay_steps=(50000,),        # steps where the rate is multiplied by decay_factor
        decay_factor=0.1,
        clip_norm=0.0,               # global gradient-norm clipping; 0 = off
    )

    config.data = dict(
        dataset="voc",               # "voc", "coco" or "shapes"
        root="",                     # VOCdevkit, or a folder with Annotations/, JPEGImages/, ImageSets/Main/
                                     # (COCO: annotations/ and the image folders)
        train_splits=("VOC2007/trainval",),  # splits joined for training (VOCdevkit: year/image set; a plain
                                     # VOC folder: the list's name, "train" for ImageSets/Main/train.txt)
        test_split="VOC2007/test",
        classes=(),                  # class names, label k the k-th (--config.data.classes=face,coin); ():
                                     # VOC's 20 for a VOCdevkit, else those in the training annotations, sorted
                                     # (COCO: its categories); the run stores them in class_names.json
        min_size=600,                # resize: short side to this ...
        max_size=1000,               # ... long side at most this
        flip=True,                   # random horizontal flip in training
        normalization="torchvision",  # "torchvision" (RGB, mean/std) or "caffe" (BGR, 0-255, mean)
        max_boxes=64,                # ground-truth boxes padded to this per image
        use_difficult=False,         # VOC "difficult" boxes are not training targets
        on_error="raise",            # a bad image or annotation: "raise" stops, naming it; "skip" drops
                                     # the image and names it in a warning with the count (an image found
                                     # unreadable only when its batch is built: a blank one, no objects)
        check_images=False,          # decode every image while reading the dataset (slow), so that a
                                     # corrupt one is found (and skipped) before training, not during it
        cache_images=False,          # keep the training images decoded in memory after their first
                                     # epoch (H x W x 3 bytes each: 98 MB for the demo's 2000 128x128
                                     # shapes): for small models on CPUs, where decoding takes cores
    )

    config.train = dict(
        batch_size=1,                # images per step (global)
        num_steps=70000,
        seed=0,                      # model init, sampling keys and data order
        log_every=20,                # steps between logged metrics
        checkpoint_every=5000,       # steps between checkpoints (and one at the end)
        keep_checkpoints=3,          # most recent checkpoints kept
    )

    config.eval = dict(
        batch_size=1,                # images per detection batch (global)
    )
    return config


def few_steps(config: ml_collections.ConfigDict, *, log_every: int = 1) -> ml_collections.ConfigDict:
    """`config` shortened to 4 steps with a checkpoint every 2: the schedule of every "smoke" variant."""
    config.train.num_steps = 4
    config.train.log_every = log_every
    config.train.checkpoint_every = 2
    return config
