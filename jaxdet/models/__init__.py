"""Flax modules: backbones, the RPN head, RoI heads, the FastRCNN / FasterRCNN detectors, and
RoI classifiers on their own; building a detector from a config (`build`) and pretrained weights
(`weights`)."""

from jaxdet.models.backbones import (VGG, VGG16, VGG16BN, BasicBlock, BottleneckBlock, ResNet, ResNet34, ResNet50,
                                     ResNet50C4, ResNet101C4, ResNet152C4, TinyResNetC4, TinyVGG)
from jaxdet.models.detector import FastRCNN, FasterRCNN
from jaxdet.models.roi_classifier import GlobalPoolHead, RoIClassifier
from jaxdet.models.roi_head import (BoxPredictor, FCHead, HeadOutputs, ResNet50C5Head, ResNetC5Head,
                                    TinyResNetC5Head)
from jaxdet.models.rpn import RPNHead, RPNOutputs
from jaxdet.models.build import build_model, init_variables, initial_variables
from jaxdet.models.weights import WeightsError, convert_vgg16, load_pretrained, load_state_dict, vgg16_state_dict
