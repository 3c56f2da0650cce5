"""Pure array operations of detection: RoI pooling, box geometry, anchors, NMS."""

from xla_ops import roi_align, roi_pool, roi_pool_with_argmax
from jaxdet.ops.anchors import anchor_grid, anchor_templates
from jaxdet.ops.boxes import box_area, box_iou, clip_boxes, decode_boxes, encode_boxes
from jaxdet.ops.nms import Detections, multiclass_nms, nms
