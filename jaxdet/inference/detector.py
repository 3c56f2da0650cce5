"""torchvision's ResNet-FPN detectors (`config.model.kind` "faster_rcnn_fpn") in detection: the one
place inference treats them apart.

`pretrained_detector(config)`: the detector of a torchvision detection state dict
(`config.model.pretrained`, a `.pth` read without torch), labelled with `model.pretrained_classes`,
no training run needed. `detect_fpn(config, detector, dataset)`: what `jaxdet.inference.detect`
does for such a model: images prepared as torchvision prepares them
(`jaxdet.models.fpn_transform`: normalise, resize bilinearly to short side `data.min_size`, long
side at most `data.max_size`, zero-pad to multiples of `data.size_divisible`), then
`jaxdet.models.fpn_detector.predict` (RPN over the levels, multi-scale RoIAlign, head and
post-processing under one jit, fixed shapes). The images of a call are padded to one canvas per
orientation (landscape, portrait): the largest resized height and width among them, rounded up
to multiples of 32, so one call compiles at most twice, and when every image of the call has
the same size the canvas is the one torchvision makes for it.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdet import distributed, reporting
from jaxdet.data import Dataset, load_image, with_class_names
from jaxdet.errors import UsageError
from jaxdet.inference.predict import detections_to_lists
from jaxdet.inference.trained import TrainedDetector
from jaxdet.models.build import FPN_KIND, build_model, initial_variables
from jaxdet.models.fpn_detector import predict as fpn_predict, settings_from_config
from jaxdet.models.fpn_transform import resized_size, transform_image

__all__ = ["FPN_KIND", "is_fpn", "pretrained_detector", "detect_fpn"]


class NoDetector(UsageError, ValueError):
    """Neither a training run nor a weights file to detect with; the message says what to give."""


def is_fpn(config: ml_collections.ConfigDict) -> bool:
    """Whether `config`'s model is a ResNet-FPN detector (`jaxdet.models.fpn_detector.FPNFasterRCNN`)."""
    return config.model.kind == FPN_KIND


def pretrained_detector(config: ml_collections.ConfigDict | None) -> tuple:
    """The detector of `config.model.pretrained` (a torchvision `fasterrcnn_resnet50_fpn(_v2)` state dict)
    imported whole, labelled with `config.model.pretrained_classes`.

    Returns:
      (config with its class list settled to those classes, TrainedDetector at step 0).

    Raises:
      NoDetector: no config, not an FPN config, or no weights file given.
      WeightsMismatch: the file does not fit the config's model.
    """
    if config is None or not is_fpn(config) or not config.model.get("pretrained"):
        raise NoDetector(
            "jaxdet predict needs a detector: a training run's directory (--workdir DIR), or, with no run, a "
            "config of torchvision's detectors and their weights file: --config fasterrcnn_resnet50_fpn_coco "
            "(or fasterrcnn_resnet50_fpn_v2_coco) --config.model.pretrained=FILE.pth, with --out DIR")
    config = with_class_names(config, tuple(config.model.pretrained_classes))
    model = build_model(config)
    variables = initial_variables(config, model, jax.random.key(0))
    device = jax.local_devices()[0]
    variables = jax.device_put(variables, device)
    return config, TrainedDetector(variables=variables, step=jnp.zeros((), jnp.int32), model=model)


def _sizes(config: ml_collections.ConfigDict, record) -> tuple:
    """((h, w) resized, (min_size, max_size) used) of a record (no resize when data.min_size is None)."""
    data = config.data
    if data.min_size is None:
        limits = (min(record.height, record.width), max(record.height, record.width))
    else:
        limits = (int(data.min_size), int(data.max_size or 10 ** 9))
    return resized_size(record.height, record.width, *limits)[0], limits


def detect_fpn(config: ml_collections.ConfigDict, detector: TrainedDetector, dataset: Dataset, *,
               show_progress: bool = True, batch_size: int | None = None) -> tuple:
    """Detections of an FPN detector on every image of `dataset`, on this process's first device (with
    several processes, each detects on every process_count-th image and all receive everyone's).

    Returns:
      (list over records of {"boxes" [n, 4] xyxy original pixels, "scores" [n], "labels" [n]}, seconds
       spent, compilation included).
    """
    batch_size = int(batch_size or config.eval.batch_size)
    divisible = int(config.data.size_divisible)
    settings = settings_from_config(config)
    device = jax.local_devices()[0]
    variables = jax.device_put(jax.tree.map(lambda x: x.addressable_data(0), detector.variables), device)
    mine = list(range(jax.process_index(), len(dataset), jax.process_count()))
    sizes = {i: _sizes(config, dataset.records[i]) for i in mine}
    groups = [[i for i in mine if (sizes[i][0][0] >= sizes[i][0][1]) == portrait] for portrait in (False, True)]
    found = {}
    began = time.perf_counter()
    with reporting.detection_bar(len(dataset), show_bar=show_progress and distributed.is_main_process()) as bar:
        for group in groups:
            if not group:
                continue
            canvas = [int(math.ceil(max(sizes[i][0][a] for i in group) / divisible) * divisible) for a in (0, 1)]
            for start in range(0, len(group), batch_size):
                indices = group[start:start + batch_size]
                images = np.zeros((batch_size, *canvas, 3), np.float32)
                image_hw = np.ones((batch_size, 2), np.int32)
                orig_hw = np.ones((batch_size, 2), np.int32)
                for slot, i in enumerate(indices):
                    record = dataset.records[i]
                    min_size, max_size = sizes[i][1]
                    image = transform_image(load_image(record), min_size=min_size, max_size=max_size)
                    images[slot, : image.shape[0], : image.shape[1]] = image
                    image_hw[slot], orig_hw[slot] = image.shape[:2], (record.height, record.width)
                out = fpn_predict(detector.model, variables, jax.device_put(images, device),
                                  jax.device_put(image_hw, device), settings=settings)
                # torchvision's postprocess: boxes x (original / resized) per axis.
                lists = detections_to_lists(out.detections, orig_hw=orig_hw, image_hw=image_hw)
                for i, result in zip(indices, lists):
                    found[i] = result
                bar.update(len(found) * jax.process_count() - bar.n)
    if jax.process_count() > 1:
        found = distributed.gather_detections(found)
    return [found[i] for i in range(len(dataset))], time.perf_counter() - began
