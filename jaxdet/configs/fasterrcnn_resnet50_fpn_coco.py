"""torchvision's COCO Faster R-CNN with ResNet-50-FPN (Lin et al. 2017), to import its weights whole.

The model of `torchvision.models.detection.fasterrcnn_resnet50_fpn` (box AP 37.0 with its
COCO_V1 weights) as `jaxdet.models.fpn_detector.FPNFasterRCNN` builds it: ResNet-50 with frozen
batch norm of eps 0 (torchvision's `overwrite_eps(model, 0.0)` for those weights), layer2-layer4
trainable, FPN P2-P6 of 256 channels, one 3x3 conv in the RPN head, anchors 32-512 (one size per
level) x ratios 0.5/1/2, 1000 proposals per level before NMS and 1000 after (NMS 0.7 per level),
7x7 RoIAlign (sampling 2) from the FPN level of each box, the two-MLP head (1024), box coder
weights (10, 10, 5, 5); detection: scores above 0.05, class-wise NMS 0.5, 100 per image; images
normalised (ImageNet mean and std), resized to short side 800 / long side at most 1333, padded
to multiples of 32. The classes are torchvision's 90 COCO slots in the order of its label ids
(label k is torchvision's k + 1), "N/A" for the ids COCO left unused: `model.pretrained_classes`,
the labels of the weights file's box predictor. Predicting with the weights alone (no training
run) labels with them; training takes the classes of its data (`model.num_classes` 0,
`data.classes` empty: from the annotations) and keeps the file's predictor only when they are
the same list, else makes new class layers for them (torchvision's fine-tuning tutorial), every
other layer imported. The training recipe is torchvision's: RPN anchors matched over all levels
with no border rule, 256 sampled (half positive), proposals per level (2000 before, 2000 after
NMS), 512 RoIs sampled (a quarter foreground), smooth-L1 with beta 1/9 (sigma 3) divided by the
sampled count, losses weighted 1 (`jaxdet.training.fpn_losses`).

    jaxdet predict --config fasterrcnn_resnet50_fpn_coco \
        --config.model.pretrained=fasterrcnn_resnet50_fpn_coco-258fb6c6.pth --out DIR IMAGES...
    get_config("tiny"): a few-thousand-parameter model of the same structure for tests.
"""

import ml_collections

from jaxdet.configs import base, tiny_shapes

# torchvision.models.detection's _COCO_CATEGORIES without "__background__": index k is label k + 1.
COCO_CATEGORIES_TORCHVISION = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A", "handbag", "tie",
    "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake",
    "chair", "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop",
    "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)


def fpn_model_fields(version: str = "v1") -> dict:
    """The `config.model` fields of torchvision's fasterrcnn_resnet50_fpn ("v1") or _v2 ("v2")."""
    v2 = version == "v2"
    return dict(
        kind="faster_rcnn_fpn",      # jaxdet.models.fpn_detector.FPNFasterRCNN
        backbone="resnet50_fpn",
        fpn_version=version,         # "v1" (fasterrcnn_resnet50_fpn) or "v2" (fasterrcnn_resnet50_fpn_v2)
        stage_sizes=(3, 4, 6, 3),    # ResNet-50
        width=64,
        trainable_layers=3,          # torchvision's trainable_backbone_layers: layer2-layer4
        bn_eps=1e-5 if v2 else 0.0,  # v1's COCO weights run FrozenBatchNorm2d with eps 0
        bn_affine_trainable=v2,      # v2: nn.BatchNorm2d (weight and bias trained); v1: frozen buffers
        fpn_channels=256,
        fpn_norm=v2,                 # v2: batch norm in the FPN
        anchor_sizes=((32,), (64,), (128,), (256,), (512,)),  # one size per level, P2-P6
        anchor_ratios=(0.5, 1.0, 2.0),
        rpn_conv_depth=2 if v2 else 1,
        box_head="conv" if v2 else "mlp",  # v2: 4 conv + 1 fc with batch norm; v1: TwoMLPHead
        representation_size=1024,
        pooled_size=7,
        sampling_ratio=2,
        canonical_scale=224,
        canonical_level=4,
        box_weights=(10.0, 10.0, 5.0, 5.0),
        box_min_size=1e-2,           # detections with a side under it dropped (torchvision's remove_small_boxes)
        num_classes=0,               # K: the data's classes (0); predicting from the file alone: pretrained_classes
        pretrained_classes=COCO_CATEGORIES_TORCHVISION,  # the labels of the file's box predictor
        roi_impl="xla_ops",          # multi-scale RoIAlign: "xla_ops" (native op per level) or "gather" (jnp)
        compute_dtype="float32",
        pretrained="",               # torchvision detection state dict (.pth), read without torch
    )


def get_config(variant: str = "", version: str = "v1") -> ml_collections.ConfigDict:
    config = base.get_config()
    config.model = fpn_model_fields(version)
    config.rpn.train_pre_nms = 2000  # per level
    config.rpn.train_post_nms = 2000
    config.rpn.test_pre_nms = 1000   # per level
    config.rpn.test_post_nms = 1000
    config.rpn.nms_iou = 0.7
    config.rpn.min_proposal_size = 1e-3  # torchvision's RPN min_size (input pixels, not scaled)
    config.rpn.allowed_border = 1e9  # torchvision labels every anchor, inside the image or not
    config.rpn.sigma = 3.0           # smooth-L1 beta 1/9 = 1 / sigma^2
    config.roi.num_samples = 512
    config.roi.foreground_fraction = 0.25
    config.roi.background_iou = (0.0, 0.5)
    config.roi.box_stds = (0.1, 0.1, 0.2, 0.2)  # = 1 / box_weights
    config.roi.sigma = 3.0           # torchvision's head loss: smooth-L1 beta 1/9 too
    config.loss.box_normalization = "samples"  # both box losses summed / sampled anchors or RoIs
    config.loss.rpn_box_weight = config.loss.roi_box_weight = 1.0
    config.test.score_threshold = 0.05
    config.test.nms_iou = 0.5
    config.test.max_detections = 100
    config.data.dataset = "coco"
    config.data.classes = ()         # the data's (a run's); predicting from the file: model.pretrained_classes
    config.data.min_size, config.data.max_size = 800, 1333
    config.data.size_divisible = 32
    config.data.normalization = "torchvision"
    config.data.train_splits = ("train2017",)
    config.data.test_split = "val2017"
    config.data.max_boxes = 100
    config.optimizer.learning_rate = 0.02 / 16  # torchvision's reference: 0.02 for 16 images
    config.optimizer.weight_decay = 1e-4
    if variant == "tiny":
        config.model.stage_sizes = (1, 1, 1, 1)
        config.model.width = 8
        config.model.fpn_channels = 16
        config.model.representation_size = 32
        config.model.trainable_layers = 5
        config.rpn.test_pre_nms = config.rpn.train_pre_nms = 200
        config.rpn.test_post_nms = config.rpn.train_post_nms = 100
        config.data.min_size, config.data.max_size = 128, 192
        config.data.dataset, config.data.root = "shapes", ""  # the shapes set in memory (tiny_shapes' smoke)
        config.data.update(tiny_shapes.get_config("smoke").data)
        config.data.min_size, config.data.max_size = 128, 192
        config.data.shapes.image_size = (128, 128)
        config.data.shapes.max_object_size = 64
        config.roi.num_samples = 64
        config.optimizer.name, config.optimizer.learning_rate = "adam", 1e-3
        config.optimizer.weight_decay, config.optimizer.clip_norm = 0.0, 10.0
        config.optimizer.decay_steps = ()
        config.train.batch_size = config.eval.batch_size = 2
        base.few_steps(config)
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of fasterrcnn_resnet50_fpn_coco (known: 'tiny')")
    return config
