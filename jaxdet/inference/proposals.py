"""A trained RPN's proposals over a whole dataset, saved as the proposals file a Fast R-CNN reads.

Fast R-CNN (Girshick 2015) trains and detects on region proposals computed ahead of it; in the
4-step alternating training of Ren et al. 2015 (sec. 3.2) they are a trained RPN's, as in
py-faster-rcnn's `tools/train_faster_rcnn_alt_opt.py` (`rpn_generate`) does. `write_run_proposals`
does that for the run in a work directory: it restores the run's Faster R-CNN, runs its RPN and
test-time proposal layer (`jaxdet.inference.predict.detection_proposals`: `config.rpn.test_pre_nms` boxes
into NMS at `rpn.nms_iou`, the `rpn.test_post_nms` best kept) on every image of the chosen splits,
maps the boxes back to each original image's pixels and saves them, keyed by the image's
`source_id` (VOC file stem, COCO image id), with `jaxdet.data.save_proposals`: the file a
`fast_rcnn` config's `data.proposals` names. py-faster-rcnn keeps 2000 per image after NMS for
this (`--config.rpn.test_post_nms=2000`); the run's own test sizes are the default.

Images go through the evaluation's input pipeline (`eval.batch_size` per batch, each padded to
its size bucket: an image's proposals do not depend on its batch mates), on the default device.
A problem the command line can name (a run without an RPN, an output path that cannot be written,
two images of one source id) is a `ProposalsError`, raised before anything is computed or written.

`write_selective_search_proposals` writes the same file from selective search (Uijlings et al. 2013;
`jaxdet.data.selective_search`), the proposals Fast R-CNN (Girshick 2015) was trained and tested on:
no trained run, only the images of a config's dataset.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import tempfile
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from jaxdet import compiler_options, workdir as run_files
from jaxdet.data import (SPLITS, Dataset, boxes_to_original, dataset_selective_search, eval_pipeline, load_dataset,
                         require_opencv, save_proposals, with_class_names)
from jaxdet.devices import select_devices
from jaxdet.errors import UsageError
from jaxdet.inference.predict import detection_proposals
from jaxdet.inference.trained import TrainedDetector, restore_trained
from jaxdet.models.detector import FasterRCNN
from jaxdet.proposals import Proposals
from jaxdet.settings import RPNSettings


SELECTIVE_SEARCH_PROPOSALS = 2000  # selective search boxes an image by default: about Fast R-CNN's (Girshick 2015)


class ProposalsError(UsageError, ValueError):
    """A run that has no RPN, or an output file that cannot be written; the message names which."""


@dataclasses.dataclass(frozen=True)
class ProposalsSummary:
    """What `write_run_proposals` wrote.

    path: the file; images: {split: number of images}; counts: [images] proposals per image;
    post_nms: the most an image can have (`config.rpn.test_post_nms`, or selective search's
    max_proposals); step: the checkpoint's step (None for selective search); method: "rpn", or
    "selective search (fast mode)" / "(quality mode)".
    """
    path: str
    images: Mapping[str, int]
    counts: np.ndarray
    post_nms: int
    step: int | None
    method: str = "rpn"


def check_rpn_run(config: ml_collections.ConfigDict, workdir: str) -> None:
    """ProposalsError unless the run in `workdir` (trained with `config`) is a Faster R-CNN."""
    kind = config.model.kind
    if kind != "faster_rcnn":
        raise ProposalsError(
            f"the run in {workdir} is not a Faster R-CNN (its model.kind is {kind!r}): only a Faster R-CNN has an "
            f"RPN to propose boxes. Give the work directory of a run trained with model.kind 'faster_rcnn' (e.g. "
            f"jaxdet train --config tiny_shapes --workdir DIR)")


def proposals_method(method: str | None, workdir: str | None, mode: str = "fast",
                     max_proposals: int | None = None) -> str:
    """`jaxdet proposals`' method: `method` ("rpn" or "selective-search") when given, else "rpn" with a
    `workdir` and "selective-search" without.

    Raises:
      ProposalsError: "rpn" without a `workdir`, or with selective search's options (a `mode` other
        than "fast", a `max_proposals`).
    """
    method = method or ("rpn" if workdir else "selective-search")
    if method == "rpn" and not workdir:
        raise ProposalsError("--method rpn proposes with a trained Faster R-CNN: give its run's directory, --workdir "
                             "RUN; or make selective search proposals, which need no run: --method selective-search "
                             "--config NAME")
    if method == "rpn" and (mode != "fast" or max_proposals is not None):
        raise ProposalsError("--quality and --max-proposals are selective search's (--method selective-search); an "
                             "RPN keeps rpn.test_post_nms proposals an image (--config.rpn.test_post_nms=N)")
    return method


def check_output(path: str) -> None:
    """ProposalsError unless a file can be written at `path` (its folder exists and is writable,
    and `path` is not a directory, nor a file of the command's inputs: `jaxdet.workdir.output`).
    Leaves nothing behind."""
    run_files.output(path)
    if os.path.isdir(path):
        raise ProposalsError(f"the output {path} is a directory: give the file to write, e.g. "
                             f"{os.path.join(path, 'proposals.npz')}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        what = "is not a directory" if os.path.exists(folder) else "does not exist"
        raise ProposalsError(f"the output {path} cannot be written: its folder {folder} {what}; create it first")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, suffix=".npz")
    except OSError as e:
        raise ProposalsError(f"the output {path} cannot be written: its folder {folder} is not writable "
                             f"({e.strerror})") from None
    os.close(fd)
    os.remove(probe)


@functools.partial(compiler_options.jit, static_argnames=("model", "settings"))
def image_proposals(model, variables: Mapping[str, Any], images: jax.Array, image_hw: jax.Array,
                    image_scale: jax.Array, *, settings: RPNSettings) -> Proposals:
    """The RPN's test-time proposals of a batch of padded images.

    Args:
      model: a `FasterRCNN` (static).
      variables: {"params": ..., ...} of the model.
      images: [N, H, W, 3] normalised, zero padded at the bottom/right.
      image_hw: [N, 2] int (height, width) of each image's content.
      image_scale: [N] resize factor of each image.
      settings: RPNSettings (static).

    Returns:
      Proposals in input pixels: boxes [N, P, 4], scores [N, P], valid [N, P], P = settings.test_post_nms.
    """
    features = model.apply(variables, images, method=model.extract)
    return detection_proposals(model, variables, features, image_hw=image_hw, image_scale=image_scale,
                               settings=settings)


def dataset_proposals(config: ml_collections.ConfigDict, detector: TrainedDetector, dataset: Dataset, *,
                      show_progress: bool = True, label: str = "propose") -> dict:
    """The RPN proposals of every image of `dataset`, in original-image pixels.

    Args:
      config: the run's config (its data section resizes the images, its rpn section sizes the
        proposal layer).
      detector: a trained Faster R-CNN (`restore_trained`).
      dataset: the images.
      show_progress: a tqdm bar over the images, labelled `label`.

    Returns:
      {str(source_id): [n, 4] float32 xyxy in the original image's pixels, best first}, n <=
      config.rpn.test_post_nms, one entry per record.

    Raises:
      ProposalsError: the model has no RPN.
    """
    if not isinstance(detector.model, FasterRCNN):
        raise ProposalsError(f"a {type(detector.model).__name__} has no RPN to propose boxes; give a Faster R-CNN")
    settings = RPNSettings.from_config(config)
    found = {}
    with tqdm(total=len(dataset), desc=label, unit="img", disable=not show_progress, dynamic_ncols=True,
              mininterval=0.5, file=sys.stderr) as bar:
        for batch in eval_pipeline(config, dataset).epoch():
            proposals = jax.device_get(image_proposals(detector.model, detector.variables, batch["images"],
                                                       batch["image_hw"], batch["scale"], settings=settings))
            # Filler slots of a last partial batch have size 0: keep their (ignored) boxes finite.
            boxes = boxes_to_original(proposals.boxes, image_hw=np.maximum(batch["image_hw"], 1),
                                      orig_hw=batch["orig_hw"])
            for i, image_id in enumerate(batch["image_id"]):
                if image_id < 0:
                    continue
                height, width = batch["orig_hw"][i]
                kept = np.clip(boxes[i][proposals.valid[i]], 0.0, np.array([width, height] * 2, np.float32))
                found[str(dataset.records[image_id].source_id)] = kept.astype(np.float32)
                bar.update(1)
    return found


def load_splits(config: ml_collections.ConfigDict, splits: Sequence[str], *, proposals: bool = True) -> dict:
    """{split: Dataset} of `config.data` (`load_dataset`), checked to key one proposals file.

    Raises:
      ProposalsError: two images of the splits have one source_id (the proposals file's key).
    """
    datasets = {split: load_dataset(config, split, proposals=proposals) for split in dict.fromkeys(splits)}
    names = {}
    for record in (r for dataset in datasets.values() for r in dataset.records):
        key = str(record.source_id)
        if names.setdefault(key, record.name) != record.name:
            raise ProposalsError(
                f"two images have the source id {key!r}, which keys the proposals file: {names[key]} and "
                f"{record.name} (COCO files of different splits may number their images alike). Write one file "
                f"per split (on the command line: --split train, then --split test) and evaluate with the test "
                f"split's file as data.proposals")
    return datasets


def write_proposals(path: str, proposals: Mapping[str, np.ndarray]) -> None:
    """Saves {source_id: [P, 4]} at `path` (exactly that name) in one step: the file appears complete
    or not at all.

    Raises:
      ProposalsError: the folder cannot be written.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, partial = tempfile.mkstemp(dir=folder, suffix=".npz")  # numpy keeps a name ending in .npz
    except OSError as e:
        raise ProposalsError(f"the output {path} cannot be written ({e.strerror})") from None
    os.close(fd)
    try:
        save_proposals(partial, proposals)
        os.replace(partial, path)
    except BaseException:
        os.remove(partial)
        raise


def write_run_proposals(config: ml_collections.ConfigDict, workdir: str, out: str, *,
                        splits: Sequence[str] = SPLITS, step: int | None = None, device: str = "auto",
                        num_devices: int | None = None, show_progress: bool = True) -> ProposalsSummary:
    """The proposals of the Faster R-CNN run in `workdir` on the `splits` of `config.data`, saved at `out`.

    Args:
      config: the run's config (`jaxdet.workdir.read_config`), with any overrides (e.g. another
        dataset in `data`, the sizes in `rpn`).
      workdir: the run's directory (its checkpoints).
      out: the file to write (`jaxdet.data.save_proposals`' format; replaced if it exists).
      splits: "train" and/or "test": one file for both is what a Fast R-CNN's `data.proposals` needs.
      step: the checkpoint's step (the latest if None).
      device, num_devices: where to compute (`jaxdet.devices.select_devices`); the proposals are
        computed on the first of those devices.
      show_progress: a progress bar per split.

    Raises:
      ProposalsError: the run is not a Faster R-CNN or `out` cannot be written (checked first:
        nothing is then computed or written), or two splits hold different images of one source_id.
      FileNotFoundError: the run has no checkpoint (of that step); `DatasetNotFound` for the data.
    """
    select_devices(device, num_devices)
    check_rpn_run(config, workdir)
    with run_files.reading(run_files.config_inputs(config), workdir):  # never the data's files, nor its proposals
        check_output(out)
    config = with_class_names(config, run_files.read_class_names(workdir))  # the run's labels, whatever the data
    datasets = load_splits(config, splits)
    detector = restore_trained(config, workdir, step=step)
    found = {}
    for split, dataset in datasets.items():
        found.update(dataset_proposals(config, detector, dataset, show_progress=show_progress,
                                       label=f"propose {split}"))
    write_proposals(out, found)
    return ProposalsSummary(path=out, images={split: len(d) for split, d in datasets.items()},
                            counts=np.array([len(boxes) for boxes in found.values()]),
                            post_nms=int(config.rpn.test_post_nms),
                            step=int(jax.device_get(detector.step)))


def write_selective_search_proposals(config: ml_collections.ConfigDict, out: str, *, splits: Sequence[str] = SPLITS,
                                     mode: str = "fast", max_proposals: int | None = None, workers: int | None = None,
                                     show_progress: bool = True) -> ProposalsSummary:
    """The selective search proposals of the images of the `splits` of `config.data`, saved at `out`.

    Args:
      config: any config naming the dataset (a Fast R-CNN's own: its `data.proposals` is not read).
      out: the file to write (`jaxdet.data.save_proposals`' format; replaced if it exists).
      splits: "train" and/or "test", one file for both.
      mode: "fast" or "quality" (`jaxdet.data.image_selective_search`).
      max_proposals: the most boxes an image keeps (OpenCV's first ones); >= 1; None: 2000, the
        Fast R-CNN paper's number.
      workers: processes computing images in parallel (`jaxdet.data.dataset_selective_search`).
      show_progress: a progress bar (one over all the splits' images: one pool of workers).

    Returns:
      a ProposalsSummary with step None; each image's proposals are [P, 4] float32 xyxy in its
      original pixels, P <= max_proposals.

    Raises:
      MissingOpenCV: OpenCV's contrib modules are not installed; ProposalsError: max_proposals < 1,
        `out` cannot be written (or is one of the data's files) or two images share a source_id. All
        are checked before any image is read.
    """
    require_opencv()
    max_proposals = SELECTIVE_SEARCH_PROPOSALS if max_proposals is None else max_proposals
    if max_proposals < 1:
        raise ProposalsError(f"--max-proposals must be at least 1, got {max_proposals}")
    unread = config.data.get("proposals") if config.model.kind == "fast_rcnn" else None  # replaced, not read
    with run_files.reading([p for p in run_files.config_inputs(config) if p != unread]):
        check_output(out)
    datasets = load_splits(config, splits, proposals=False)
    found = dataset_selective_search([r for d in datasets.values() for r in d.records], mode=mode,
                                     max_proposals=max_proposals, workers=workers, show_progress=show_progress,
                                     label=f"selective search ({' + '.join(datasets)})")
    write_proposals(out, found)
    return ProposalsSummary(path=out, images={split: len(d) for split, d in datasets.items()},
                            counts=np.array([len(boxes) for boxes in found.values()]), post_nms=max_proposals,
                            step=None, method=f"selective search ({mode} mode)")
