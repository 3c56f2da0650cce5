"""Datasets (Pascal VOC, COCO, synthetic shapes), transforms, the fixed-shape input pipeline, and
building datasets and pipelines from a config (`build`).

Boxes are xyxy in continuous pixels everywhere (width = x2 - x1; see `records`).
"""

from jaxdet.data.coco import coco_ground_truth, dataset_to_coco, read_coco, write_coco
from jaxdet.data.pipeline import InputPipeline
from jaxdet.data.precomputed_proposals import attach_proposals, save_proposals
from jaxdet.data.records import (
    DataError,
    Dataset,
    Record,
    concat_datasets,
    load_image,
    make_dataset,
)
from jaxdet.data.selective_search import (MissingOpenCV, dataset_selective_search, image_selective_search,
                                          require_opencv)
from jaxdet.data.shapes import SHAPES, ShapesConfig, draw_image, make_shapes, write_shapes
from jaxdet.data.transforms import (
    boxes_to_original,
    denormalize,
    flip_boxes,
    hflip,
    normalize,
    resize,
    resized_hw,
    scale_boxes,
    size_buckets,
)
from jaxdet.data.voc import VOC_CLASSES, find_voc_split, read_voc, read_voc_class_names, write_voc
from jaxdet.data.build import (SPLITS, DatasetNotFound, check_num_classes, eval_pipeline, load_dataset,
                               model_num_classes, shapes_splits, train_pipeline, with_class_names,
                               write_shapes_dataset)
