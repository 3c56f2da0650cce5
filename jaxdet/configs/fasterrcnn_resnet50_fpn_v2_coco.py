"""torchvision's improved COCO Faster R-CNN with ResNet-50-FPN, `fasterrcnn_resnet50_fpn_v2` (box AP 46.7).

As `fasterrcnn_resnet50_fpn_coco` with the v2 changes torchvision made (after Li et al. 2021's
recipe): batch norm (eps 1e-5, trainable scale and bias) in the trunk and the FPN instead of
frozen eps-0 statistics, two 3x3 convs in the RPN head, and a box head of four 3x3 convs with
batch norm and one fully connected layer (1024) instead of the two-MLP head.

    jaxdet predict --config fasterrcnn_resnet50_fpn_v2_coco \
        --config.model.pretrained=fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth --out DIR IMAGES...
"""

import ml_collections

from jaxdet.configs import fasterrcnn_resnet50_fpn_coco


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    return fasterrcnn_resnet50_fpn_coco.get_config(variant, version="v2")
