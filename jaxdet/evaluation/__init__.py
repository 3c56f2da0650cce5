"""Detection metrics (Pascal VOC as the devkit computes it, COCO via pycocotools), and evaluating a
trained detector over a dataset (`run`). The pictures it draws are `jaxdet.pictures`', exported
here too."""

from jaxdet.evaluation.coco import STAT_NAMES, detections_to_coco, eval_detection_coco
from jaxdet.evaluation.voc import average_precision, eval_detection_voc
from jaxdet.pictures import class_colour, draw_detections, plot_pr_curves
