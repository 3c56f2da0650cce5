"""Detection metrics (Pascal VOC as the devkit computes it, COCO via pycocotools), the recall of the
ground truth by proposals (`proposal_recall`), and evaluating a trained detector over a dataset (`run`).
The pictures it draws are `jaxdet.pictures`', exported here too."""

from jaxdet.evaluation.coco import STAT_NAMES, detections_to_coco, eval_detection_coco
from jaxdet.evaluation.proposal_recall import best_overlap_rank, proposal_recall
from jaxdet.evaluation.voc import average_precision, eval_detection_voc
from jaxdet.pictures import class_colour, draw_detections, plot_pr_curves
