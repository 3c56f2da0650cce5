"""The input pipeline: fixed-shape batches built ahead by worker threads, resumable by step.

Every batch is a dict of numpy arrays laid out as `jaxdet.data.batch` specifies (the contract
with the training and detection code).

The order is a pure function of (seed, epoch): each epoch is a seeded permutation, walked in
order, each image joining the batch being filled for its size bucket; a bucket's batch is
emitted when full. The number of batches per epoch therefore does not depend on the shuffle,
so a global step maps to (epoch, position) and `batches(start_step=s)` reproduces exactly the
batches a run from 0 would have yielded from step s on. Per-image randomness (the flip) is
seeded by (seed, epoch, image index), never by thread timing.

Workers are plain threads: PIL decoding and resizing and numpy release the GIL, and threads
share in-memory (synthetic) datasets without copying. At most `prefetch` batches are in
flight, so memory stays bounded.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import threading
import warnings
from typing import Iterator, Sequence

import numpy as np

from jaxdet.data.batch import empty_batch
from jaxdet.data.records import DataError, Dataset, check_on_error, limit_boxes, load_image
from jaxdet.data.transforms import (
    check_normalization,
    flip_boxes,
    hflip,
    normalize,
    resize,
    resized_hw,
    scale_boxes,
    size_buckets,
)

# Padded images (float32) a batch holds beyond this cannot be trained or detected on: a backbone's
# activations are many times its input (VGG16's conv1 alone has 64 channels a pixel against 3).
MAX_BATCH_BYTES = 4 << 30
# With no resize, the most pixels of the padded canvas: a larger image (a 12000x9000 photo) would fill the
# device's memory with feature maps however small the batch, after minutes of compiling.
MAX_CANVAS_PIXELS = 4096 * 4096


class InputPipeline:
    """Fixed-shape batches of a Dataset.

    Args:
      dataset: the Dataset.
      batch_size: images per batch on this shard.
      max_boxes: ground-truth slots per image; an image with more boxes that count (`valid`)
        is a DataError naming the file, raised here (`records.limit_boxes`; ignored boxes beyond
        the slots are dropped).
      min_size, max_size: resize limits (see `transforms.resized_hw`); both None keeps images
        at their native size (e.g. tiny synthetic images).
      buckets: padded (H, W) sizes, tried smallest area first; None derives them: the two
        orientations of `size_buckets(min_size, max_size)`, or with no resize the largest image
        size in the dataset (a ValueError naming the largest images when a batch of that size
        would exceed MAX_BATCH_BYTES).
      normalization: "torchvision" or "caffe" (see `transforms.normalize`).
      shuffle: permute the images every epoch (False: dataset order, for evaluation).
      flip: mirror each image with probability 1/2 (training augmentation).
      drop_remainder: drop each bucket's last partial batch per epoch; if False it is emitted,
        filled up with images of `image_id` -1 and no valid boxes (evaluation sees every image).
      keep_difficult: mark VOC `difficult` boxes valid (VOC training drops them).
      seed: seeds the order and the flips.
      num_workers: threads building batches.
      prefetch: batches built ahead of the consumer.
      num_shards, shard_index: split every global batch of `batch_size * num_shards` images
        between processes; all shards see the same bucket at each step.
      max_proposals: if set, batches carry each record's `proposals` (the first
        `max_proposals`, resized and flipped with the image) as "proposals"/"proposal_valid".
      on_error: an image that cannot be read when its batch is built (missing, corrupt, not its
        annotated size): "raise" a DataError naming it; "skip" warns once naming it, with the
        count so far (`unreadable`), and its slot stays blank: zero pixels, no valid box.
      cache_images: keep each image decoded after its first read (its H x W x 3 bytes in memory),
        so later epochs skip the decoding: worth it for small images and models, where decoding is
        a large part of a step's CPU time.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        max_boxes: int = 100,
        min_size: int | None = 600,
        max_size: int | None = 1000,
        buckets: Sequence[tuple] | None = None,
        normalization: str = "torchvision",
        shuffle: bool = True,
        flip: bool = True,
        drop_remainder: bool = True,
        keep_difficult: bool = False,
        seed: int = 0,
        num_workers: int = 2,
        prefetch: int = 4,
        num_shards: int = 1,
        shard_index: int = 0,
        max_proposals: int | None = None,
        on_error: str = "raise",
        cache_images: bool = False,
    ):
        counts = {"batch_size": batch_size, "max_boxes": max_boxes, "num_workers": num_workers,
                  "prefetch": prefetch, "num_shards": num_shards, "max_proposals": max_proposals}
        for name, value in counts.items():
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
        check_normalization(normalization)
        check_on_error(on_error)
        if len(dataset) == 0:
            raise ValueError("dataset is empty")
        limit_boxes(dataset, max_boxes=int(max_boxes), keep_difficult=keep_difficult)
        if max_proposals is not None:
            lacking = [r.name for r in dataset.records if r.proposals is None]
            if lacking:
                raise ValueError(
                    f"max_proposals is set but {len(lacking)} records have no proposals, e.g. "
                    f"{lacking[0]} (attach them with jaxdet.data.attach_proposals)"
                )
        self.max_proposals = None if max_proposals is None else int(max_proposals)
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.max_boxes = int(max_boxes)
        self.min_size, self.max_size = min_size, max_size
        self.normalization = normalization
        self.shuffle, self.flip = shuffle, flip
        self.drop_remainder = drop_remainder
        self.keep_difficult = keep_difficult
        self.seed = int(seed)
        self.num_workers, self.prefetch = int(num_workers), int(prefetch)
        self.num_shards, self.shard_index = int(num_shards), int(shard_index)
        self.on_error = on_error
        self.unreadable: dict[str, str] = {}  # image -> why it could not be read (on_error "skip")
        self._decoded: dict[int, np.ndarray] | None = {} if cache_images else None  # dataset index -> image

        sizes = np.array(
            [resized_hw(r.height, r.width, min_size=min_size, max_size=max_size)[:2]
             for r in dataset.records],
            np.int64,
        )  # [N, 2]
        if buckets is None:
            if min_size is None and max_size is None:
                buckets = (tuple(int(s) for s in sizes.max(axis=0)),)
                self._check_canvas(sizes)
            else:
                buckets = size_buckets(min_size or max_size, max_size or min_size)
        self.buckets = tuple(sorted((tuple(int(s) for s in b) for b in buckets),
                                    key=lambda b: (b[0] * b[1], b)))
        self.image_bucket = self._assign_buckets(sizes)  # [N]
        global_batch = self.batch_size * self.num_shards
        counts = np.bincount(self.image_bucket, minlength=len(self.buckets))
        per_bucket = counts // global_batch if drop_remainder else -(-counts // global_batch)
        self.steps_per_epoch = int(per_bucket.sum())
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"no full batch of {global_batch} images in any bucket "
                f"(images per bucket {counts.tolist()}): lower the batch size "
                "(config.train.batch_size) or give more images"
            )
        # Two epochs can be in flight at an epoch boundary; workers share the plans (and `unreadable`).
        self._plans: dict[int, list] = {}
        self._lock = threading.Lock()

    def _check_canvas(self, sizes: np.ndarray) -> None:
        """ValueError naming the tallest and widest images when a batch padded to their size ([N, 2]
        `sizes`, native) would hold more than MAX_BATCH_BYTES."""
        height, width = (int(s) for s in sizes.max(axis=0))
        nbytes = self.batch_size * height * width * 3 * np.dtype(np.float32).itemsize
        if nbytes <= MAX_BATCH_BYTES and height * width <= MAX_CANVAS_PIXELS:
            return
        largest = dict.fromkeys(int(np.argmax(sizes[:, axis])) for axis in (0, 1))  # tallest, widest
        named = " and ".join(f"{self.dataset.records[i].name} ({sizes[i, 1]}x{sizes[i, 0]} pixels)" for i in largest)
        raise ValueError(
            f"{named}: with no resize (config.data.min_size and config.data.max_size unset) every batch is "
            f"padded to the largest image, here {width}x{height} ({height * width / 1e6:.1f} million pixels; at most "
            f"{MAX_CANVAS_PIXELS / 1e6:.1f} million are trained on unresized), so each batch of {self.batch_size} "
            f"images would hold {nbytes / 1e9:.1f} GB of pixels and far more of feature maps. Resize the images as they are read (e.g. "
            f"config.data.min_size=600 and config.data.max_size=1000, the paper's), or leave "
            f"{'that image' if len(largest) == 1 else 'those images'} out of the split")

    def _assign_buckets(self, sizes: np.ndarray) -> np.ndarray:
        fits = np.stack([(sizes[:, 0] <= h) & (sizes[:, 1] <= w) for h, w in self.buckets], 1)
        if not np.all(fits.any(axis=1)):
            i = int(np.argmin(fits.any(axis=1)))
            raise ValueError(
                f"{self.dataset.records[i].name}: resized size {tuple(sizes[i])} fits no bucket "
                f"in {self.buckets}"
            )
        return np.argmax(fits, axis=1)  # the first fit is the smallest

    def plan(self, epoch: int) -> list:
        """The global batches of one epoch: a list of ([G] int64 image indices, bucket index)."""
        with self._lock:
            if epoch not in self._plans:
                self._plans = {e: p for e, p in self._plans.items() if e >= epoch - 1}
                self._plans[epoch] = self._make_plan(epoch)
            return self._plans[epoch]

    def _make_plan(self, epoch: int) -> list:
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
        else:
            order = np.arange(n)
        global_batch = self.batch_size * self.num_shards
        pending = [[] for _ in self.buckets]
        batches = []
        for index in order:
            bucket = int(self.image_bucket[index])
            pending[bucket].append(index)
            if len(pending[bucket]) == global_batch:
                batches.append((np.array(pending[bucket], np.int64), bucket))
                pending[bucket] = []
        if not self.drop_remainder:
            for bucket, rest in enumerate(pending):
                if rest:
                    filler = [-1] * (global_batch - len(rest))
                    batches.append((np.array(rest + filler, np.int64), bucket))
        assert len(batches) == self.steps_per_epoch
        return batches

    def batch_indices(self, step: int) -> tuple:
        """This shard's image indices ([B] int64, -1 for filler) and bucket at a global step."""
        epoch, position = divmod(int(step), self.steps_per_epoch)
        indices, bucket = self.plan(epoch)[position]
        start = self.shard_index * self.batch_size
        return indices[start:start + self.batch_size], bucket, epoch

    def build_batch(self, step: int) -> dict:
        """The batch at a global step (what `batches` yields there)."""
        indices, bucket, epoch = self.batch_indices(step)
        height, width = self.buckets[bucket]
        batch = empty_batch(self.batch_size, (height, width), max_boxes=self.max_boxes,
                            max_proposals=self.max_proposals)
        for slot, index in enumerate(indices):
            if index >= 0:
                self._fill(batch, slot, int(index), epoch)
        return batch

    def _fill(self, batch: dict, slot: int, index: int, epoch: int) -> None:
        record = self.dataset.records[index]
        image = self._load(index)
        if image is None:  # unreadable and skipped: blank pixels, nothing to learn or find
            h, w, scale = resized_hw(record.height, record.width, min_size=self.min_size, max_size=self.max_size)
            flip, boxes, valid, labels = False, np.zeros((0, 4), np.float32), np.zeros(0, bool), np.zeros(0, np.int32)
        else:
            image, boxes, scale = resize(
                image, record.boxes, min_size=self.min_size, max_size=self.max_size
            )
            coin = np.random.default_rng([self.seed, epoch, record.image_id]).random()
            flip = self.flip and coin < 0.5
            if flip:
                image, boxes = hflip(image, boxes)
            h, w = image.shape[:2]
            normalize(image, self.normalization, out=batch["images"][slot, :h, :w])
            valid, labels = record.targets(self.keep_difficult), record.labels
            if len(valid) > self.max_boxes:  # only ignored boxes are past the slots (`limit_boxes`)
                # Ignored boxes carry nothing a padded slot would not, so they make room first.
                keep = np.argsort(~valid, kind="stable")[: self.max_boxes]
                boxes, valid, labels = boxes[keep], valid[keep], labels[keep]
        if self.max_proposals is not None:
            self._fill_proposals(batch, slot, record, (h, w), flip)
        k = len(labels)
        batch["boxes"][slot, :k] = boxes
        batch["labels"][slot, :k] = labels
        batch["valid"][slot, :k] = valid
        batch["image_hw"][slot] = (h, w)
        batch["scale"][slot] = scale
        batch["orig_hw"][slot] = (record.height, record.width)
        batch["image_id"][slot] = record.image_id

    def _load(self, index: int) -> np.ndarray | None:
        """The image of record `index` ([H, W, 3] uint8, never written to), or None when it cannot be
        read and `on_error` is "skip"."""
        if self._decoded is not None and index in self._decoded:
            return self._decoded[index]
        record = self.dataset.records[index]
        try:
            image = load_image(record)
        except DataError as error:
            if self.on_error == "raise":
                raise
            with self._lock:
                first = record.name not in self.unreadable
                self.unreadable.setdefault(record.name, str(error))
                count = len(self.unreadable)
            if first:
                warnings.warn(f"skipping: {error}. With config.data.on_error=skip its place in each batch is a blank "
                              f"image with no objects ({count} unreadable image{'s' if count > 1 else ''} so far)",
                              stacklevel=2)
            return None
        if self._decoded is not None:
            self._decoded[index] = image  # threads may decode an image twice at first: the same pixels
        return image

    def _fill_proposals(self, batch, slot, record, image_hw, flip) -> None:
        proposals = scale_boxes(record.proposals[: self.max_proposals],
                                from_hw=(record.height, record.width), to_hw=tuple(image_hw))
        if flip:
            proposals = flip_boxes(proposals, width=image_hw[1])
        batch["proposals"][slot, : len(proposals)] = proposals
        batch["proposal_valid"][slot, : len(proposals)] = True

    def batches(self, start_step: int = 0, num_steps: int | None = None) -> Iterator[dict]:
        """Yields the batches of global steps start_step, start_step + 1, ... in order.

        Args:
          start_step: the step to resume at (what a checkpoint stores).
          num_steps: how many batches; None runs forever (epochs repeat, each reshuffled).
        """
        if start_step < 0:
            raise ValueError(f"start_step must be non-negative, got {start_step}")
        stop = None if num_steps is None else start_step + int(num_steps)
        steps = iter(range(start_step, stop)) if stop is not None else itertools.count(start_step)
        pool = concurrent.futures.ThreadPoolExecutor(self.num_workers, "jaxdet-input")
        in_flight: collections.deque = collections.deque()
        try:
            for step in steps:
                in_flight.append(pool.submit(self.build_batch, step))
                if len(in_flight) >= self.prefetch:
                    break
            while in_flight:
                batch = in_flight.popleft().result()
                step = next(steps, None)
                if step is not None:
                    in_flight.append(pool.submit(self.build_batch, step))
                yield batch
        finally:
            # A consumer that stops early (or an error) must not leave workers running.
            for future in in_flight:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def epoch(self) -> Iterator[dict]:
        """One pass over epoch 0 (with shuffle=False and drop_remainder=False: every image once)."""
        return self.batches(0, self.steps_per_epoch)
