"""Detection metrics (Pascal VOC as the devkit computes it, COCO via pycocotools) and pictures."""

from jaxdet.evaluation.coco import STAT_NAMES, detections_to_coco, eval_detection_coco
from jaxdet.evaluation.pictures import class_colour, draw_detections, plot_pr_curves
from jaxdet.evaluation.voc import average_precision, eval_detection_voc
