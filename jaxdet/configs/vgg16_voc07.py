"""Faster R-CNN with VGG16 on PASCAL VOC 2007 trainval, tested on VOC 2007 test: the base config.

    jaxdet train --config vgg16_voc07 --config.data.root=/data/VOCdevkit --workdir runs/voc07
    get_config("smoke"): a few steps at 1/4 the image size, for a quick check on a real VOC tree.
"""

import ml_collections

from jaxdet.configs import base


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = base.get_config()
    if variant == "smoke":
        config.data.min_size, config.data.max_size = 150, 250
        base.few_steps(config)
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of vgg16_voc07 (known: 'smoke')")
    return config
