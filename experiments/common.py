"""What the benchmarks in experiments/ share: the synthetic inputs, the timing, the torchvision
counterparts of jaxdet's model and RoI pooling, and how a report is shown.

Imports jax, numpy and jaxdet: a script that changes glibc's malloc settings
(jaxdet.host_memory) does so before importing this module, as those settings must be made
before any thread starts.
"""

import concurrent.futures
import copy
import functools
import shlex
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.configs import load_config
from jaxdet.models import backbones
from jaxdet.training import create_train_state
from jaxdet.data.build import model_num_classes
from jaxdet.models.build import build_model
from jaxdet.training.step import step_key, train_step
from xla_ops import roi_pool


# --- reports -----------------------------------------------------------------------------------

def command_line(script, argv=None):
    """`script` and the arguments (default: this process's), quoted for a shell."""
    return " ".join([script] + [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)])


def publish(report, out=None):
    """Prints `report` after a blank line and, given `out`, appends it to that markdown file the same way."""
    print("\n" + report, flush=True)
    if out:
        with open(out, "a") as f:
            f.write("\n" + report)


# --- timing ------------------------------------------------------------------------------------

def seconds(fn):
    """Wall seconds of fn(), its result ready."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def in_rounds(fns, repeats, warmup=3):
    """{name: [seconds per round]} of each fn of `fns`, all called in turn in every round (in
    reverse order every other round) after `warmup` calls each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for i in range(repeats):
        for name in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: np.array(t) for name, t in times.items()}


# --- the training step on synthetic batches (experiments' presets) ----------------------------

PRESETS = {"tiny": ("tiny_shapes", (128, 128), 8), "vgg16": ("vgg16_voc07", (600, 1000), 20)}


def synthetic_batch(batch_size, image_hw, max_boxes, num_classes, seed=0):
    """Random images with 1..max_boxes random boxes of 1/10 to 1/2 the image side each."""
    rng = np.random.default_rng(seed)
    height, width = image_hw
    size = rng.uniform(0.1, 0.5, (batch_size, max_boxes, 2)) * np.array([width, height])
    corner = rng.uniform(0, 1, (batch_size, max_boxes, 2)) * (np.array([width, height]) - size)
    count = rng.integers(1, max_boxes + 1, batch_size)
    return {
        "images": rng.normal(size=(batch_size, height, width, 3)).astype(np.float32),
        "boxes": np.concatenate([corner, corner + size], -1).astype(np.float32),
        "labels": rng.integers(0, num_classes, (batch_size, max_boxes)).astype(np.int32),
        "valid": np.arange(max_boxes)[None, :] < count[:, None],
        "image_hw": np.tile(np.array(image_hw, np.int32), (batch_size, 1)),
        "scale": np.ones((batch_size,), np.float32),
    }


def preset_inputs(preset, batch_size, seed=0):
    """(config, synthetic batch of `batch_size` images) of a preset in PRESETS."""
    name, image_hw, max_boxes = PRESETS[preset]
    config = load_config(name)
    return config, synthetic_batch(batch_size, image_hw, max_boxes, model_num_classes(config), seed)


def prepared_variant(config, dtype, batch):
    """(config, train state, batch on the device, lowered train step) of one row."""
    config = copy.deepcopy(config)
    config.model.compute_dtype = dtype
    config.model.cpu_bf16_kernels = dtype == "bfloat16"  # the AMX kit where the CPU has it (as measured)
    state = create_train_state(config, jax.random.PRNGKey(0))
    batch = jax.device_put(batch)
    return config, state, batch, train_step.lower(state, batch, step_key(state))


def compile_concurrently(lowered):
    """{row: Lowered} -> {row: (Compiled, seconds)}. XLA compiles without holding the GIL, so the
    rows' train steps compile at once in threads, on as many cores: the GPU check's six VGG16
    variants, compiled one after the other, would not fit its time limit. Each row's seconds
    overlap the others'."""
    def compile_one(lowered_step):
        start = time.perf_counter()
        compiled = lowered_step.compile()
        return compiled, time.perf_counter() - start

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(lowered)) as pool:
        futures = {row: pool.submit(compile_one, step) for row, step in lowered.items()}
        return {row: future.result() for row, future in futures.items()}


# --- RoI pooling inputs (VGG16's stride 16, 7x7 output) -----------------------------------------

IMAGE = 800
STRIDE = 16
OUTPUT = (7, 7)


def make_inputs(num_rois, seed=0, channels=512, dtype="float32", image_hw=(IMAGE, IMAGE), feature_hw=None,
                num_images=1):
    """(features [num_images, h, w, channels], rois [num_rois, 5] float32): random normal
    features of an image_hw image at stride 16 (feature_hw, default image_hw // 16), and
    proposal-like RoIs 16 to 400 pixels a side inside the image, the first num_rois / num_images
    on image 0, the next on image 1, ..."""
    rng = np.random.default_rng(seed)
    if feature_hw is None:
        feature_hw = (image_hw[0] // STRIDE, image_hw[1] // STRIDE)
    features = rng.normal(size=(num_images, *feature_hw, channels)).astype(jnp.dtype(dtype))
    size = rng.uniform(16, 400, (num_rois, 2))
    x1 = rng.uniform(0, image_hw[1] - size[:, 0])
    y1 = rng.uniform(0, image_hw[0] - size[:, 1])
    image = np.arange(num_rois) * num_images // num_rois
    rois = np.stack([image, x1, y1, x1 + size[:, 0], y1 + size[:, 1]], 1)
    return features, rois.astype(np.float32)


def unique_bytes(features, num_rois):
    """The forward's bytes moved once each: the features read, the output and argmax written."""
    outputs = num_rois * OUTPUT[0] * OUTPUT[1] * features.shape[3]
    return features.nbytes + outputs * (features.itemsize + 4)


def cotangent(num_rois, channels):
    """The output gradient the forward+backward timings pull back: normal, seed 1, float32."""
    return jnp.asarray(np.random.default_rng(1).normal(size=(num_rois, *OUTPUT, channels)).astype(np.float32))


def jax_fns(features, rois, impl, rounding="none"):
    """(forward, forward+backward) of roi_pool, jitted, each returning its result when ready; the
    backward pulls back `cotangent` to the features."""
    cot = cotangent(rois.shape[0], features.shape[3])
    pool = functools.partial(roi_pool, output_size=OUTPUT, spatial_scale=1 / STRIDE, rounding=rounding, impl=impl)
    fwd = jax.jit(pool)
    fwd_bwd = jax.jit(jax.grad(lambda f, r: jnp.vdot(pool(f, r), cot)))
    f, r = jnp.asarray(features), jnp.asarray(rois)
    return (lambda: fwd(f, r).block_until_ready()), (lambda: fwd_bwd(f, r).block_until_ready())


# --- torchvision's counterparts (the `bench` extra: torch, torchvision) ---------------------------

def torch_trunk(config):
    """The torch counterpart of `config.model.backbone`, with the same frozen stages (their
    parameters requires_grad=False: no gradient, no update, as jaxdet's stop_gradient and
    optimizer mask): "vgg16" is torchvision's own `vgg16().features[:30]` (conv1_1 to conv5_3
    with their ReLUs, no last max pool, as jaxdet's VGG16); any other plain VGG of
    `jaxdet.models.backbones` (e.g. "tiny_vgg") is ported layer for layer from its `stages`
    (3x3 convolutions with padding 1 and ReLU, a 2x2/2 max pool before every stage but the
    first). Has `out_channels` and `stride` attributes."""
    import torch
    import torchvision

    backbone = build_model(config).backbone
    if not isinstance(backbone, backbones.VGG) or backbone.batch_norm:
        raise ValueError(f"no torch counterpart for backbone {config.model.backbone!r} (plain VGGs only)")
    if config.model.backbone == "vgg16":
        trunk = torchvision.models.vgg16().features[:30]
    else:
        layers, in_channels = [], 3
        for s, widths in enumerate(backbone.stages, start=1):
            if s > 1:
                layers.append(torch.nn.MaxPool2d(2, 2))
            for width in widths:
                layers += [torch.nn.Conv2d(in_channels, width, 3, padding=1), torch.nn.ReLU(inplace=True)]
                in_channels = width
        trunk = torch.nn.Sequential(*layers)
    stage = 1  # torchvision's VGG pools after a stage, the port before one: either way a pool starts the next
    for layer in trunk:
        if isinstance(layer, torch.nn.MaxPool2d):
            stage += 1
        elif stage <= backbone.frozen_stages:
            layer.requires_grad_(False)
    convs = [layer for layer in trunk if isinstance(layer, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [w for widths in backbone.stages for w in widths], "not the same trunk"
    trunk.out_channels = backbone.out_channels
    trunk.stride = backbone.stride
    return trunk


def torchvision_faster_rcnn(config, trunk, image_hw):
    """torchvision's FasterRCNN built to match jaxdet's model of `config` as closely as the
    library allows, for images of exactly `image_hw` (normalised already, as jaxdet's batches):
    the given trunk (`torch_trunk`), one feature map, anchors of config.model.anchor_scales x
    stride and anchor_ratios, an RPN head of config.model.rpn_channels, the config's pre/post-NMS
    counts, NMS IoU, minimum proposal size, RPN and RoI IoU thresholds, sampling counts and
    fractions; RoIPool of config.model.pooled_size at 1/stride (put in after construction: the
    constructor accepts only MultiScaleRoIAlign there); fully connected layers of
    config.model.head_hidden (TwoMLPHead when they are two of one width); the test-time score
    threshold, NMS IoU and detection count. The transform neither resizes (min_size, max_size =
    the image's sides; `_skip_resize` in training) nor pads (size_divisible=1) nor changes
    values (mean 0, std 1). What still differs: experiments/results/peers.md."""
    import torch
    import torchvision
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.rpn import AnchorGenerator, RPNHead

    class RoIPoolAdapter(torch.nn.Module):
        """RoIPool as RoIHeads calls its box_roi_pool: (features dict, proposals, image_sizes).
        It pools in float32 under bfloat16 autocast, as torchvision's autocast rule for roi_pool
        does on CUDA (its CPU kernel has no bfloat16)."""

        def __init__(self, output_size, spatial_scale):
            super().__init__()
            self.pool = torchvision.ops.RoIPool(output_size, spatial_scale)

        def forward(self, features, proposals, image_sizes):
            return self.pool(features["0"].float(), [p.float() for p in proposals])

    class WideRPNHead(torch.nn.Module):
        """torchvision's RPNHead with a 3x3 conv of `channels` outputs instead of in_channels
        (jaxdet's tiny model: 64 -> 128); the same initialisation and interface."""

        def __init__(self, in_channels, channels, num_anchors):
            super().__init__()
            self.conv = torch.nn.Conv2d(in_channels, channels, 3, padding=1)
            self.cls_logits = torch.nn.Conv2d(channels, num_anchors, 1)
            self.bbox_pred = torch.nn.Conv2d(channels, num_anchors * 4, 1)
            for layer in (self.conv, self.cls_logits, self.bbox_pred):
                torch.nn.init.normal_(layer.weight, std=0.01)
                torch.nn.init.constant_(layer.bias, 0)

        def forward(self, x):
            hidden = [torch.nn.functional.relu(self.conv(f)) for f in x]
            return [self.cls_logits(t) for t in hidden], [self.bbox_pred(t) for t in hidden]

    m, rpn, roi, test = config.model, config.rpn, config.roi, config.test
    stride = trunk.stride
    num_anchors = len(m.anchor_scales) * len(m.anchor_ratios)
    if m.rpn_channels == trunk.out_channels:
        rpn_head = RPNHead(trunk.out_channels, num_anchors)
    else:
        rpn_head = WideRPNHead(trunk.out_channels, m.rpn_channels, num_anchors)
    pooled = tuple(m.pooled_size)
    hidden = tuple(m.head_hidden)
    flat = trunk.out_channels * pooled[0] * pooled[1]
    if len(hidden) == 2 and hidden[0] == hidden[1]:
        box_head = TwoMLPHead(flat, hidden[0])
    else:
        box_head = FastRCNNConvFCHead((trunk.out_channels, *pooled), [], list(hidden))
    height, width = image_hw
    model = FasterRCNN(
        trunk, min_size=min(height, width), max_size=max(height, width), image_mean=[0.0] * 3,
        image_std=[1.0] * 3, size_divisible=1, _skip_resize=True,
        rpn_anchor_generator=AnchorGenerator(sizes=(tuple(stride * s for s in m.anchor_scales),),
                                             aspect_ratios=(tuple(m.anchor_ratios),)),
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=rpn.train_pre_nms, rpn_post_nms_top_n_train=rpn.train_post_nms,
        rpn_pre_nms_top_n_test=rpn.test_pre_nms, rpn_post_nms_top_n_test=rpn.test_post_nms,
        rpn_nms_thresh=rpn.nms_iou, rpn_fg_iou_thresh=rpn.positive_iou, rpn_bg_iou_thresh=rpn.negative_iou,
        rpn_batch_size_per_image=rpn.num_samples, rpn_positive_fraction=rpn.positive_fraction,
        box_head=box_head, box_predictor=FastRCNNPredictor(hidden[-1], model_num_classes(config) + 1),
        box_fg_iou_thresh=roi.foreground_iou, box_bg_iou_thresh=roi.background_iou[1],
        box_batch_size_per_image=roi.num_samples, box_positive_fraction=roi.foreground_fraction,
        bbox_reg_weights=tuple(1.0 / s for s in roi.box_stds),
        box_score_thresh=test.score_threshold, box_nms_thresh=test.nms_iou, box_detections_per_img=test.max_detections)
    model.roi_heads.box_roi_pool = RoIPoolAdapter(pooled, 1.0 / stride)
    model.rpn.min_size = rpn.min_proposal_size  # an attribute, not a constructor argument (default 1e-3)
    return model


def torch_optimizer(config, model):
    """(optimizer, clip_norm) of `config.optimizer` on the trainable parameters: SGD with momentum
    or Adam at the base learning rate, weight decay on weights only (not biases), as jaxdet's
    optimizer; clip_norm > 0: clip the gradient's global norm first (torch.nn.utils.clip_grad_norm_)."""
    import torch

    o = config.optimizer
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.ndim > 1], "weight_decay": o.weight_decay},
              {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0}]
    if o.name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=o.learning_rate, momentum=o.momentum)
    elif o.name == "adam":
        optimizer = torch.optim.Adam(groups, lr=o.learning_rate)
    else:
        raise ValueError(f"no torch counterpart for optimizer {o.name!r}")
    return optimizer, o.clip_norm


class TorchvisionSide:
    """torchvision's FasterRCNN matched to `config` (`torchvision_faster_rcnn`) on one batch of
    `synthetic_batch`, on the device JAX uses (the GPU where there is one): `train_once()` is one
    optimizer step (forward, the four losses summed, backward, clipping if the config clips, the
    update), `predict_once()` one detection pass under torch.inference_mode; both end with
    torch.cuda.synchronize on a GPU. dtype "bfloat16": under torch.autocast."""

    def __init__(self, config, batch, dtype="float32"):
        import torch

        self.torch = torch
        self.device = "cuda" if jax.default_backend() == "gpu" else "cpu"
        image_hw = batch["images"].shape[1:3]
        self.model = torchvision_faster_rcnn(config, torch_trunk(config), image_hw).to(self.device)
        self.optimizer, self.clip_norm = torch_optimizer(config, self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.use_batch(batch)
        self.autocast = functools.partial(torch.autocast, self.device, dtype=torch.bfloat16,
                                          enabled=dtype == "bfloat16")
        self.sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)
        self.loss = None

    def use_batch(self, batch):
        """Another batch of the same image size: NCHW, contiguous, converted once outside the
        timed calls; the labels 1..K (0 is torchvision's background), the valid boxes only."""
        torch = self.torch
        images = torch.from_numpy(np.ascontiguousarray(batch["images"].transpose(0, 3, 1, 2))).to(self.device)
        self.images = list(images)
        self.targets = [{"boxes": torch.from_numpy(b[v]).to(self.device),
                         "labels": torch.from_numpy(l[v]).long().to(self.device) + 1}
                        for b, l, v in zip(batch["boxes"], batch["labels"], batch["valid"])]

    def train_once(self):
        if not self.model.training:
            self.model.train()
        with self.autocast():
            loss = sum(self.model(self.images, self.targets).values())
        self.optimizer.zero_grad()
        loss.backward()
        if self.clip_norm > 0:
            self.torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.optimizer.step()
        self.sync()
        self.loss = loss.detach()

    def predict_once(self):
        if self.model.training:
            self.model.eval()
        with self.torch.inference_mode(), self.autocast():
            out = self.model(self.images)
        self.sync()
        return out


def torchvision_fns(features, rois, cot):
    """({name: fn}, output NHWC): torchvision.ops.roi_pool's forward and forward+backward (its
    backward is atomicAdd) and a torch copy_ of the forward's unique bytes, on the device JAX
    uses (the GPU where there is one)."""
    import torch
    from torchvision.ops import roi_pool as tv_roi_pool

    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    # NCHW, converted once, outside the timed calls.
    f = torch.tensor(np.ascontiguousarray(np.asarray(features).transpose(0, 3, 1, 2)), device=device,
                     requires_grad=True)
    boxes = torch.tensor(rois, device=device)
    g = torch.tensor(np.ascontiguousarray(np.asarray(cot).transpose(0, 3, 1, 2)), device=device)

    def forward():
        with torch.no_grad():
            tv_roi_pool(f, boxes, OUTPUT, 1 / STRIDE)
        sync()

    def forward_backward():
        f.grad = None
        tv_roi_pool(f, boxes, OUTPUT, 1 / STRIDE).backward(g)
        sync()

    with torch.no_grad():
        out = tv_roi_pool(f, boxes, OUTPUT, 1 / STRIDE).permute(0, 2, 3, 1).cpu().numpy()
    moved = unique_bytes(np.asarray(features), rois.shape[0])
    src = torch.ones(moved // 2 // 4, device=device)
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)
        sync()

    return {"torchvision forward": forward, "torchvision forward+backward": forward_backward,
            "torch copy_ of the same bytes": copy}, out


# RoIAlign at a ResNet-50-FPN head's shapes (800 x 1344 images): bench_roi_align and bench_peers.
ROI_ALIGN_IMAGE_HW = (800, 1344)
ROI_ALIGN_MAPS = (("stride 8", (2, 100, 168, 256), 1 / 8), ("stride 16", (2, 50, 84, 256), 1 / 16))


def roi_align_rois(num, num_images, seed=0):
    """[num, 5] (batch_index, x1, y1, x2, y2): boxes of 16 to 600 pixels a side inside a
    ROI_ALIGN_IMAGE_HW image, each image's share of them."""
    rng = np.random.default_rng(seed)
    h, w = ROI_ALIGN_IMAGE_HW
    size = rng.uniform(16, 600, (num, 2))
    corner = rng.uniform(0, 1, (num, 2)) * (np.array([w, h]) - size)
    batch = np.repeat(np.arange(num_images), -(-num // num_images))[:num]
    return np.concatenate([batch[:, None], corner, corner + size], 1).astype(np.float32)


def roi_align_sides(features, rois, scale, *, backward, device="cpu"):
    """({name: jaxdet fn}, {"torchvision": fn}, max |forward difference|) for RoIAlign 7x7, sampling 2,
    aligned, each library in its own layout: features [N, H, W, C] NHWC for xla_ops.roi_align and
    NCHW (converted once) for torchvision.ops.roi_align; rois [K, 5]. With `backward`, the functions
    compute the features' gradient for a cotangent of ones (on a GPU, jaxdet's atomicAdd and
    deterministic backward both); on a GPU also an XLA copy of the features, the floor of memory
    traffic. Each function blocks until its result is ready."""
    import torch
    import torchvision
    from xla_ops import roi_align

    k, c = rois.shape[0], features.shape[3]
    dev = jax.devices("gpu" if device == "gpu" else "cpu")[0]
    f, r = jax.device_put(jnp.asarray(features), dev), jax.device_put(jnp.asarray(rois), dev)
    cot = jax.device_put(jnp.ones((k, 7, 7, c), jnp.float32), dev)
    tdev = "cuda" if device == "gpu" else "cpu"
    ft = torch.tensor(np.transpose(features, (0, 3, 1, 2)).copy(), device=tdev)
    rt = torch.tensor(rois, device=tdev)
    sync = torch.cuda.synchronize if device == "gpu" else (lambda: None)
    tv_forward = lambda x: torchvision.ops.roi_align(x, rt, 7, scale, 2, True)  # noqa: E731
    forward = jax.jit(lambda f, r: roi_align(f, r, 7, scale, 2, True))
    jax_fns = {}
    if not backward:
        jax_fns["jaxdet"] = lambda: forward(f, r).block_until_ready()

        def torchvision_fn():
            tv_forward(ft)
            sync()
    else:
        for det in ((None, True) if device == "gpu" else (None,)):
            grad = jax.jit(lambda f, r, det=det: jax.vjp(
                lambda x: roi_align(x, r, 7, scale, 2, True, deterministic=det), f)[1](cot)[0])
            jax_fns["jaxdet" if det is None else "jaxdet deterministic"] = lambda grad=grad: grad(f, r).block_until_ready()
        ftg, cot_t = ft.clone().requires_grad_(True), torch.ones((k, c, 7, 7), device=tdev)

        def torchvision_fn():
            tv_forward(ftg).backward(cot_t)
            ftg.grad = None
            sync()
    if device == "gpu":
        copy = jax.jit(lambda x: x + 1)
        jax_fns["XLA copy of the features"] = lambda: copy(f).block_until_ready()
    expected = np.transpose(tv_forward(ft).detach().cpu().numpy(), (0, 2, 3, 1))
    difference = float(np.abs(np.asarray(forward(f, r)) - expected).max())
    return jax_fns, {"torchvision": torchvision_fn}, difference


# The box predictor's weight stds (class, box) that give class logits of std ~2 on random
# networks (their box-head features have rms ~9 in v1, ~29 in v2): softmax scores spread over (0, 1).
FPN_SCORE_LAYER_STDS = {"v1": (0.008, 0.005), "v2": (0.0025, 0.002)}


def torchvision_fpn_model(variant, seed=0):
    """torchvision's fasterrcnn_resnet50_fpn ("v1", built as for its COCO weights) or _v2, seeded, with random batch-norm statistics and spread-out score layers."""
    import torch
    from torchvision.models import resnet50
    from torchvision.models.detection._utils import overwrite_eps
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.faster_rcnn import FasterRCNN, fasterrcnn_resnet50_fpn_v2
    from torchvision.ops import misc as misc_nn_ops

    torch.manual_seed(seed)
    if variant == "v1":
        backbone = _resnet_fpn_extractor(resnet50(norm_layer=misc_nn_ops.FrozenBatchNorm2d), 3)
        model = FasterRCNN(backbone, num_classes=91)
        overwrite_eps(model, 0.0)  # as torchvision does for its COCO_V1 weights
    else:
        model = fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=91)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (misc_nn_ops.FrozenBatchNorm2d, torch.nn.BatchNorm2d)):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
        cls_std, box_std = FPN_SCORE_LAYER_STDS[variant]
        model.rpn.head.bbox_pred.weight.normal_(0, 0.001)
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, cls_std)
        model.roi_heads.box_predictor.bbox_pred.weight.normal_(0, box_std)
    return model.eval()
