"""jaxdet: Fast and Faster R-CNN in JAX/Flax, with RoI max pooling as a native XLA custom call.

Subpackages, one topic each:
  jaxdet.ops         RoI pooling (from xla_ops), box geometry, anchors, NMS
  jaxdet.proposals   the proposal layer: RPN outputs -> proposals (training and detection)
  jaxdet.targets     anchor targets, proposal targets (matching, balanced sampling)
  jaxdet.losses      RPN and RoI-head losses
  jaxdet.models      backbones, RPN, RoI head, FastRCNN / FasterRCNN
  jaxdet.data        VOC, COCO, synthetic shapes, transforms, input pipeline
  jaxdet.evaluation  VOC and COCO metrics, pictures
  jaxdet.training    train state, train step, checkpoints, pretrained weights
  jaxdet.configs     loading experiment configs (Python files with get_config) by path
"""

__version__ = "0.1.0"
