"""vmap of the RoI custom calls: the mapped axis folded into the images and RoIs of ONE call.

Both ops (RoI max pooling, `xla_ops.ops`; RoIAlign, `xla_ops.align`) have a forward call
(features [N, H, W, C], rois [K, 5] -> per-RoI outputs [K, ...]) and a backward call (rois and
per-RoI arrays [K, ...] -> a gradient [num_images, H, W, C]). Under `jax.vmap` over B problems,
rather than a loop of B calls, the batched rules below make one call over the B * N images, each
RoI's batch index moved to its problem's block of images, and unfold the results.
"""

import jax
import jax.numpy as jnp


def fold_rois(rois, axis_size, num_images):
    """rois [B, K, 5] of B independent problems over N images each -> [B*K, 5] indexing the
    [B*N] folded images. Invalid batch indices stay invalid (-1) rather than landing in another
    problem's images."""
    rois = jnp.asarray(rois)
    b = rois[..., 0]
    ok = jnp.isfinite(b) & (b >= 0) & (b < num_images)
    offset = (jnp.arange(axis_size, dtype=jnp.float32) * num_images)[:, None]
    rois = rois.at[..., 0].set(jnp.where(ok, jnp.trunc(b) + offset, -1.0))
    return rois.reshape(-1, 5)


def broadcast_unbatched(axis_size, in_batched, *args):
    """Each of `args` with the mapped axis in front: broadcast to `axis_size` where not batched."""
    return [x if batched else jnp.broadcast_to(x, (axis_size,) + x.shape)
            for x, batched in zip(args, in_batched)]


def folded_forward(call, features, rois):
    """`call(features, rois)` (a tuple of per-RoI arrays [K, ...]), batched under vmap by folding.

    Args:
      call: (features [N, H, W, C], rois [K, 5]) -> tuple of [K, ...] arrays.
    """

    @jax.custom_batching.custom_vmap
    def forward(features, rois):
        return tuple(call(features, rois))

    @forward.def_vmap
    def forward_batched(axis_size, in_batched, features, rois):
        features_batched, rois_batched = in_batched
        num_rois = rois.shape[1] if rois_batched else rois.shape[0]
        if features_batched:
            (rois,) = broadcast_unbatched(axis_size, [rois_batched], rois)
            rois = fold_rois(rois, axis_size, features.shape[1])
            features = features.reshape((-1,) + features.shape[2:])
        else:  # every problem reads the same images
            rois = rois.reshape(-1, 5)
        outs = forward(features, rois)
        unfold = lambda x: x.reshape((axis_size, num_rois) + x.shape[1:])
        return tuple(map(unfold, outs)), (True,) * len(outs)

    return forward(features, rois)


def folded_backward(call, rois, per_roi, num_images):
    """`call(rois, per_roi, num_images)` (the features' gradient), batched under vmap by folding.

    Args:
      call: (rois [K, 5], per_roi: tuple of [K, ...] arrays, num_images) -> [num_images, H, W, C].
      per_roi: the per-RoI operands (the output's cotangent, and for RoI pooling its argmax).
    """

    @jax.custom_batching.custom_vmap
    def backward(rois, *per_roi):
        return call(rois, per_roi, num_images)

    @backward.def_vmap
    def backward_batched(axis_size, in_batched, rois, *per_roi):
        # Per-problem gradients [B, N, H, W, C]; where the primal features were shared by the
        # problems, custom_vjp's batching sums them over B.
        rois, *per_roi = broadcast_unbatched(axis_size, in_batched, rois, *per_roi)
        flat = lambda x: x.reshape((-1,) + x.shape[2:])
        grad = folded_backward(call, fold_rois(rois, axis_size, num_images), tuple(map(flat, per_roi)),
                               axis_size * num_images)
        return grad.reshape((axis_size, num_images) + grad.shape[1:]), True

    return backward(rois, *per_roi)
