"""Pure array operations of detection: RoI pooling, box geometry, anchors, NMS."""

from xla_ops import roi_pool, roi_pool_with_argmax
