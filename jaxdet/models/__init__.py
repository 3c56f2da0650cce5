"""Flax modules: backbones, the RPN head, RoI heads, and the FastRCNN / FasterRCNN detectors."""

from jaxdet.models.backbones import (VGG, VGG16, ResNet50C4, ResNet101C4, ResNet152C4, ResNetC4, TinyResNetC4,
                                     TinyVGG)
from jaxdet.models.detector import FastRCNN, FasterRCNN
from jaxdet.models.roi_head import (BoxPredictor, FCHead, HeadOutputs, ResNet50C5Head, ResNetC5Head,
                                    TinyResNetC5Head)
from jaxdet.models.rpn import RPNHead, RPNOutputs
