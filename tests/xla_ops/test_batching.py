"""xla_ops.batching, the vmap rule both RoI ops share: two nested vmaps (4 x 3 problems of 2
images each) fold into ONE forward and ONE backward custom call, and equal a loop over the
problems, gradients included; RoIs whose batch index is outside their own problem stay invalid."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xla_ops import _native, align, roi_align, roi_pool
from xla_ops.batching import fold_rois
from helpers import distinct_features, random_rois

PLATFORM = _native.current_platform()
needs_native = pytest.mark.skipif(
    not _native.is_built(PLATFORM), reason=f"the native op is not built for {PLATFORM}: {_native.why_not_built(PLATFORM)}")

# name: (the op on one problem, its forward and backward custom-call targets)
OPS = {
    "roi_pool": (lambda f, r: roi_pool(f, r, (2, 3), 0.25, impl="ffi"), _native.FORWARD_TARGET,
                 _native.BACKWARD_TARGET),
    "roi_align": (lambda f, r: roi_align(f, r, (2, 3), 0.25, 2, impl="ffi"), align.FORWARD_TARGET,
                  align.BACKWARD_TARGET),
}


def test_fold_rois_moves_batch_indices_to_the_problems_blocks_and_keeps_invalid_ones_invalid():
    rois = jnp.array([[[0, 1, 2, 3, 4], [1.7, 1, 2, 3, 4]],
                      [[2, 1, 2, 3, 4], [np.nan, 1, 2, 3, 4]],
                      [[-1, 1, 2, 3, 4], [1, 5, 6, 7, 8]]], jnp.float32)  # 3 problems of 2 images
    folded = np.asarray(fold_rois(rois, 3, 2))
    np.testing.assert_array_equal(folded[:, 0], [0, 1, -1, -1, -1, 5])
    np.testing.assert_array_equal(folded[:, 1:], np.asarray(rois).reshape(-1, 5)[:, 1:])


@needs_native
@pytest.mark.parametrize("name", sorted(OPS))
def test_nested_vmap_is_one_call_each_way_and_equals_a_loop(name):
    per_problem, forward_target, backward_target = OPS[name]
    rng = np.random.default_rng(5)
    features = distinct_features(rng, (4, 3, 2, 8, 9, 3))           # [4, 3] problems of 2 images
    rois = random_rois(rng, 4 * 3 * 6, 2, (32, 36)).reshape(4, 3, 6, 5)
    rois[1, 2, 0, 0] = 2.0                                        # another problem's image: invalid
    rois = jnp.asarray(rois)
    nested = jax.vmap(jax.vmap(per_problem))
    got = jax.jit(nested)(features, rois)
    for i in range(4):
        for j in range(3):
            np.testing.assert_array_equal(got[i, j], per_problem(features[i, j], rois[i, j]))
    assert not np.asarray(got[1, 2, 0]).any()

    cot = jnp.asarray(rng.normal(size=got.shape).astype(np.float32))
    loss = lambda f: jnp.sum(nested(f, rois) * cot)
    grads = jax.jit(jax.grad(loss))(features)
    for i in range(4):
        for j in range(3):
            want = jax.grad(lambda f: jnp.sum(per_problem(f, rois[i, j]) * cot[i, j]))(features[i, j])
            np.testing.assert_allclose(grads[i, j], want, rtol=1e-5, atol=1e-6)

    # One call over all 4 * 3 * 2 = 24 images (not a loop of calls over 2).
    (call,) = [line for line in jax.jit(nested).lower(features, rois).as_text().splitlines() if forward_target in line]
    assert "tensor<24x8x9x3xf32>" in call and "tensor<72x5xf32>" in call, call
    hlo = jax.jit(jax.grad(loss)).lower(features).as_text()
    # RoIAlign's gradient needs no forward (RoI pooling's its argmax: one forward call).
    assert hlo.count(backward_target) == 1 and hlo.count(forward_target) <= 1
