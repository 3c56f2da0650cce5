"""Selective search region proposals (Uijlings et al. 2013), the proposals Fast R-CNN was trained on.

Fast R-CNN (Girshick 2015) trains and detects on about 2000 selective search proposals an image,
computed ahead of the network. Selective search needs no model: it over-segments the image
(Felzenszwalb-Huttenlocher graph segmentation), then greedily merges the most similar neighbouring
regions (colour, texture, size and fill similarities) until one region is left; every region
formed on the way is a proposal. OpenCV's contrib implementation
(`cv2.ximgproc.segmentation.createSelectiveSearchSegmentation`) does the work, in one of the
paper's two settings: "fast" (the HSV and Lab images, each segmented with k = 150, 300, 450;
2 merge strategies) or "quality" (HSV, Lab, intensity, hue and rgI; k = 150 to 750 by 150; 4
strategies: more proposals, several times slower). Sigma is 0.8 in both; the image is segmented
at its own size.

OpenCV comes with the optional extra `jaxdet[proposals]` (opencv-contrib-python-headless); without
it `require_opencv` raises `MissingOpenCV`, whose message says what to install.

Boxes are the project's xyxy in continuous original-image pixels (`jaxdet.data.records`): OpenCV's
integer rectangle (x, y, w, h) covers columns x..x+w-1, i.e. x1 = x, x2 = x + w. They are kept in
OpenCV's order, duplicates removed, at most `max_proposals`: ascending rank, a region's rank being
its level in the merge hierarchy times a uniform random number (the paper's pseudo-random ranking,
inverted: fine regions first). OpenCV draws those numbers from C's `rand()`; it is reseeded
(`srand(1)`, C's initial state) before each image, so an image's boxes do not depend on which
worker computed it, nor after which images.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import sys
from typing import Mapping, Sequence

import numpy as np
from tqdm import tqdm

from jaxdet.data.records import Record, load_image
from jaxdet.errors import JaxdetError

EXTRA = "proposals"  # pyproject.toml's optional extra that installs OpenCV's contrib modules
MODES = ("fast", "quality")


class MissingOpenCV(JaxdetError):
    """OpenCV's contrib modules (cv2.ximgproc) are not installed; the message says how to get them."""


def require_opencv():
    """The `cv2` module, with its `ximgproc` contrib modules.

    Raises:
      MissingOpenCV: cv2 cannot be imported, or it is a build without the contrib modules (the
        plain opencv-python wheel has no ximgproc).
    """
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is None or not hasattr(getattr(cv2, "ximgproc", None), "segmentation"):
        found = "OpenCV is not installed" if cv2 is None else "this OpenCV has no contrib modules (cv2.ximgproc)"
        raise MissingOpenCV(f"selective search needs OpenCV's contrib modules and {found}: install jaxdet's "
                            f"'{EXTRA}' extra, pip install 'jaxdet[{EXTRA}]' (opencv-contrib-python-headless)")
    return cv2


def _seed_c_rand() -> None:
    """srand(1): OpenCV ranks the regions with C's rand() (see the module docstring)."""
    try:
        ctypes.CDLL(None).srand(1)
    except (OSError, AttributeError):  # no C library to reach: the ranking then follows the process's history
        pass


def rects_to_boxes(rects: np.ndarray, *, max_proposals: int, width: int, height: int) -> np.ndarray:
    """OpenCV's rectangles as the project's boxes: the first `max_proposals` distinct ones.

    Args:
      rects: [R, 4] (x, y, w, h) integer pixel rectangles, in OpenCV's (ranked) order.
      max_proposals: the most boxes kept (the first ones); >= 1.
      width, height: the image's size, the boxes are clipped to.

    Returns:
      [P, 4] float32 xyxy (x1 = x, y1 = y, x2 = x + w, y2 = y + h), P <= max_proposals, duplicates
      (after clipping) and empty boxes removed, in the order given.
    """
    rects = np.asarray(rects, np.float32).reshape(-1, 4)
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
    boxes = np.clip(boxes, 0.0, np.array([width, height] * 2, np.float32))
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    _, first = np.unique(boxes, axis=0, return_index=True)
    return boxes[np.sort(first)[:max_proposals]]


def image_selective_search(image: np.ndarray, *, mode: str = "fast", max_proposals: int = 2000) -> np.ndarray:
    """The selective search proposals of one image.

    Args:
      image: [H, W, 3] uint8 RGB.
      mode: "fast" or "quality" (the paper's two settings, see the module docstring).
      max_proposals: the most boxes kept (OpenCV's first ones).

    Returns:
      [P, 4] float32 xyxy in the image's pixels, P <= max_proposals.

    Raises:
      MissingOpenCV: OpenCV's contrib modules are not installed.
      ValueError: an unknown mode, or max_proposals < 1.
    """
    if mode not in MODES:
        raise ValueError(f"selective search mode must be one of {MODES}, got {mode!r}")
    if max_proposals < 1:
        raise ValueError(f"max_proposals must be at least 1, got {max_proposals}")
    cv2 = require_opencv()
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(np.ascontiguousarray(image[..., ::-1]))  # OpenCV's colour conversions expect BGR
    search.switchToSelectiveSearchFast() if mode == "fast" else search.switchToSelectiveSearchQuality()
    _seed_c_rand()
    height, width = image.shape[:2]
    return rects_to_boxes(search.process(), max_proposals=max_proposals, width=width, height=height)


def _init_worker() -> None:
    """A pool worker: OpenCV on one thread (the pool is the parallelism)."""
    require_opencv().setNumThreads(1)


def _record_proposals(task: tuple) -> np.ndarray:
    record, mode, max_proposals = task
    return image_selective_search(load_image(record), mode=mode, max_proposals=max_proposals)


def default_workers() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def dataset_selective_search(records: Sequence[Record], *, mode: str = "fast", max_proposals: int = 2000,
                             workers: int | None = None, show_progress: bool = True,
                             label: str = "selective search") -> Mapping[str, np.ndarray]:
    """The selective search proposals of the images of `records` (a Dataset's, or several's), computed in parallel.

    Args:
      records: the images (files or in memory; `Dataset.records`); their ground truth is not read.
      mode, max_proposals: as `image_selective_search`.
      workers: processes, one image each at a time, OpenCV single-threaded in each (default: one per
        CPU this process may use); 1 computes in this process. The pool starts its workers from a
        fork server (a fork of this process would inherit JAX's threads), which imports the main
        module afresh: a script that calls this needs the `if __name__ == "__main__":` guard.
      show_progress: a tqdm bar over the images, labelled `label`.

    Returns:
      {str(source_id): [P, 4] float32 xyxy in original-image pixels}, P <= max_proposals, one entry
      per record, in the records' order.

    Raises:
      MissingOpenCV: checked before any image is read.
      DataError: an image cannot be read.
    """
    require_opencv()
    image_selective_search(np.zeros((8, 8, 3), np.uint8), mode=mode, max_proposals=max_proposals)  # checks args
    workers = max(1, min(workers or default_workers(), len(records)))
    tasks = [(record, mode, max_proposals) for record in records]
    found = {}
    with tqdm(total=len(tasks), desc=label, unit="img", disable=not show_progress, dynamic_ncols=True,
              mininterval=0.5, file=sys.stderr) as bar:
        def collect(records: list[Record], results) -> None:
            for record, boxes in zip(records, results):
                found[str(record.source_id)] = boxes
                bar.update(1)

        if workers == 1:
            collect(records, map(_record_proposals, tasks))
        else:
            # forkserver: a fresh process forks the workers, not this one (JAX's threads do not survive a fork).
            with multiprocessing.get_context("forkserver").Pool(workers, initializer=_init_worker) as pool:
                chunk = max(1, min(16, len(tasks) // (4 * workers)))
                collect(records, pool.imap(_record_proposals, tasks, chunksize=chunk))
    return found
