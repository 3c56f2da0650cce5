"""Detection with a trained Fast or Faster R-CNN.

  predict    `predict` on a padded batch (jit-compiled, fixed shapes), the RPN's test-time
             proposals, and the per-image lists in original-image pixels
  trained    `TrainedDetector`, and restoring one from a run's checkpoint (`restore_trained`)
  dataset    `detect`: detection over a whole dataset, split over devices and processes
  files      detection on image files: pictures and detections.json (`jaxdet predict`)
  proposals  a trained RPN's proposals over a dataset, or selective search's, saved for a Fast R-CNN
             (`jaxdet proposals`)
"""

from jaxdet.inference.dataset import detect
from jaxdet.inference.files import ImageFilesError, detect_run_files, image_files, predict_files
from jaxdet.inference.predict import detection_proposals, detections_to_lists, predict
from jaxdet.inference.proposals import (ProposalsError, proposals_method, write_run_proposals,
                                       write_selective_search_proposals)
from jaxdet.inference.trained import TrainedDetector, restore_trained
