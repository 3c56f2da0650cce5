"""The static numbers of training and detection: one frozen dataclass per config section, with the
section's field names (`config.rpn.train_pre_nms` is `RPNSettings.train_pre_nms`).

    DetectorSettings.from_config(config)   rpn, roi, loss, test: what the jit-compiled train step
                                           (`jaxdet.training.step`) and `jaxdet.inference.predict`
                                           read, as static arguments
    OptimizerSettings.from_config(config)  the optimizer (`jaxdet.training.optimizer`)

    as_pair(key, value)                    a pair-valued field's (PAIRS) two items

The fields have no defaults of their own: every default is written once, in
`jaxdet/configs/base.py` (the Faster R-CNN paper's VGG16 recipe, Ren et al. 2015, explained field by
field), and a field a config's section lacks takes the base config's value (`from_section`). The
settings of the base config itself are `DetectorSettings.from_config(base.get_config())`. Frozen
and hashable: equal settings are the same static argument, so they compile one program.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Mapping, Tuple

import ml_collections

from jaxdet.configs import base
from jaxdet.errors import UsageError


class InvalidSetting(UsageError, ValueError):
    """A config value jaxdet cannot run with; the message names its key (`config.section.field`)."""


SIZE = "(height, width)"
# The config's fields that hold a pair, by key: what the two numbers are.
PAIRS = {"model.pooled_size": SIZE, "data.shapes.image_size": SIZE, "roi.background_iou": "(lo, hi)"}


def as_pair(key: str, value: tuple) -> tuple:
    """The two items of `value`, the value of the pair-valued field `key` (PAIRS): one number n for a
    size is the square (n, n), as torchvision's RoIPool reads `output_size=7`.

    Raises:
      InvalidSetting: naming the key, for any other number of items.
    """
    value = tuple(value)
    if len(value) == 1 and PAIRS[key] == SIZE:
        return value * 2
    if len(value) != 2:
        raise InvalidSetting(f"config.{key} is a pair {PAIRS[key]}, got {value!r}: give both numbers, e.g. "
                             f"config.{key}=a,b")
    return value


def _coerce(value, hint, key: str):
    """`value` as the annotated type `hint` (tuples item by item); InvalidSetting naming `key` if it is not one."""
    origin = typing.get_origin(hint)
    if origin in (tuple, Tuple) and key in PAIRS and isinstance(value, (tuple, list)):
        value = as_pair(key, value)
    try:
        if origin in (tuple, Tuple):
            item = typing.get_args(hint)[0]
            return tuple(_coerce(v, item, key) for v in value)
        if hint is bool:
            if not isinstance(value, bool):
                raise TypeError(f"{value!r} is not a boolean")
            return value
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value!r} is not a whole number")
        return hint(value)
    except (TypeError, ValueError) as e:
        raise InvalidSetting(f"config.{key} must be a {getattr(hint, '__name__', hint)}, got {value!r} ({e})") from None


class _Section:
    """Mixin: `from_config` builds the dataclass from the config section named SECTION."""

    SECTION = ""
    MODEL_KEYS = ()  # keys of the section that `jaxdet.models.build_model` reads instead

    @classmethod
    def from_section(cls, section: Mapping):
        """From the config section of the same field names; a field the section lacks takes its value in
        the base config (`jaxdet.configs.base`).

        Raises:
          InvalidSetting: a key the settings do not know, or a value of the wrong type (naming it).
        """
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(section.keys()) - set(names) - set(cls.MODEL_KEYS))
        if unknown:
            raise InvalidSetting(f"unknown config key{'s' if len(unknown) > 1 else ''} "
                                f"{', '.join(f'config.{cls.SECTION}.{k}' for k in unknown)} (the section's keys: "
                                f"{', '.join(names)})")
        values = {**base.get_config()[cls.SECTION], **section}
        return cls(**{name: _coerce(values[name], hints[name], f"{cls.SECTION}.{name}") for name in names})

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict):
        """From `config[SECTION]` (see `from_section`)."""
        return cls.from_section(config[cls.SECTION])


@dataclasses.dataclass(frozen=True)
class RPNSettings(_Section):
    """`config.rpn`: anchor sampling and labelling, the smooth-L1 sigma of the RPN box loss, and the
    proposal layer (its sizes in training and at test time, its NMS, the smallest proposal kept,
    in original-image pixels)."""

    SECTION = "rpn"
    num_samples: int
    positive_fraction: float
    positive_iou: float
    negative_iou: float
    allowed_border: float
    sigma: float
    train_pre_nms: int
    train_post_nms: int
    test_pre_nms: int
    test_post_nms: int
    nms_iou: float
    min_proposal_size: float


@dataclasses.dataclass(frozen=True)
class RoISettings(_Section):
    """`config.roi`: RoI sampling and labelling (Girshick 2015) and the smooth-L1 sigma of the head
    box loss. Its `box_stds`, the box coding, is the model's (`FastRCNN.box_stds`)."""

    SECTION = "roi"
    MODEL_KEYS = ("box_stds",)
    num_samples: int
    foreground_fraction: float
    foreground_iou: float
    background_iou: Tuple[float, ...]
    sigma: float


@dataclasses.dataclass(frozen=True)
class LossSettings(_Section):
    """`config.loss`: the box losses are divided by the number of sampled anchors / RoIs
    ("samples", py-faster-rcnn's normalisation, weight 1) or of positives ("positives", the
    paper's N_reg, which it weights by lambda = 10), then multiplied by rpn_box_weight /
    roi_box_weight in the total."""

    SECTION = "loss"
    box_normalization: str
    rpn_box_weight: float
    roi_box_weight: float


@dataclasses.dataclass(frozen=True)
class TestSettings(_Section):
    """`config.test`: post-processing of each image's detections (score threshold, per-class NMS,
    how many are kept)."""

    SECTION = "test"
    __test__ = False  # a config section, not a pytest test class (its name starts with "Test")
    score_threshold: float
    nms_iou: float
    max_detections: int


@dataclasses.dataclass(frozen=True)
class OptimizerSettings(_Section):
    """`config.optimizer`: name "sgd" | "adam"; learning_rate: base rate; momentum: SGD momentum;
    weight_decay: L2 on kernels; warmup_steps, warmup_factor: linear warm-up from warmup_factor *
    learning_rate; decay_steps, decay_factor: rate x decay_factor at each of these steps;
    clip_norm: global gradient-norm clipping (0: off)."""

    SECTION = "optimizer"
    name: str
    learning_rate: float
    momentum: float
    weight_decay: float
    warmup_steps: int
    warmup_factor: float
    decay_steps: Tuple[int, ...]
    decay_factor: float
    clip_norm: float


@dataclasses.dataclass(frozen=True)
class DetectorSettings:
    """The sections the detector reads in training (rpn, roi, loss) and detection (rpn, roi, test)."""

    rpn: RPNSettings
    roi: RoISettings
    loss: LossSettings
    test: TestSettings

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "DetectorSettings":
        """From `config.rpn`, `config.roi`, `config.loss` and `config.test`."""
        return cls(rpn=RPNSettings.from_config(config), roi=RoISettings.from_config(config),
                   loss=LossSettings.from_config(config), test=TestSettings.from_config(config))
