"""Per-image functions over a batch, split along the batch on a device mesh."""

import jax

from xla_ops.sharding import batch_partitioned


def map_images(per_image_fn):
    """A function of one image's arrays -> the same function over a batch of images.

    The result is `jax.vmap(per_image_fn)`, except under a device mesh in context
    (`jax.set_mesh`, or `jaxdet.training.parallel`'s train step): there it is split along the
    batch (`xla_ops.sharding.batch_partitioned`), so each device samples targets, proposes,
    suppresses and decodes for its own images only instead of for the whole batch.

    Every array argument and output has the batch as its leading axis; values closed over (e.g.
    the anchors in a `functools.partial`) are shared by all images.
    """
    name = getattr(per_image_fn, "func", per_image_fn).__name__
    return batch_partitioned(jax.vmap(per_image_fn), name=name)
