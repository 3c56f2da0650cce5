"""xla_ops.roi_align against torchvision.ops.roi_align on the CPU (runs where torch and
torchvision are installed, e.g. the `bench` extra's venv; skipped elsewhere).

Forward within 1e-5 and gradients within 1e-4 in float32 over random, adversarial and degenerate
RoIs, both `aligned`, sampling_ratio in {-1, 0, 2}, several scales and output sizes; float16
within float16's rounding (torchvision's CPU kernel rounds every operation to float16, jaxdet
computes in float32 and rounds once). jaxdet runs NHWC, torchvision NCHW.

Left out: the RoIs whose result torchvision leaves undefined (a batch index outside [0, N) or
not finite, or a coordinate not finite: it reads out of bounds or casts NaN to int; jaxdet
gives zeros), which tests/xla_ops/test_roi_align.py checks against the numpy transcription.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xla_ops import roi_align

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

SHAPE = (2, 13, 17, 6)  # [N, H, W, C]
# Valid RoIs torchvision computes in reasonable time: degenerate, inverted, far away, around
# and on the borders of the map, and one a few thousand samples a bin.
EXTREME = np.array([
    [0.7, 0, 0, 8, 8], [1, 5, 5, 2, 1], [0, 3, 3, 3, 3], [1, 1e5, 1e5, 1e5 + 9, 1e5 + 9],
    [0, -1e5, -1e5, -1e5 + 9, -1e5 + 9], [1, -40, -40, 200, 200], [0, -0.75, -0.75, 67.25, 51.25],
    [1, 64, 48, 68, 52], [0, -1000, -600, 1000, 600], [1, 30, 20, 30.001, 20.001],
], np.float32)


def rois_for(seed, num=24):
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(-20, 68, num)
    y1 = rng.uniform(-16, 52, num)
    random = np.stack([rng.integers(0, SHAPE[0], num), x1, y1, x1 + rng.uniform(0, 60, num),
                       y1 + rng.uniform(0, 45, num)], 1).astype(np.float32)
    return np.concatenate([random, EXTREME])


def torchvision_align(features, rois, output_size, scale, sampling_ratio, aligned, cot):
    """(out NHWC, grad NHWC) of torchvision on NCHW tensors."""
    x = torch.tensor(np.transpose(features, (0, 3, 1, 2)).copy(), requires_grad=True)
    out = torchvision.ops.roi_align(x, torch.tensor(rois, dtype=x.dtype), output_size, scale, sampling_ratio,
                                    aligned)
    out.backward(torch.tensor(np.transpose(cot, (0, 3, 1, 2)).copy()))
    return (np.transpose(out.detach().numpy(), (0, 2, 3, 1)), np.transpose(x.grad.numpy(), (0, 2, 3, 1)))


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
@pytest.mark.parametrize("output_size,scale", [((7, 7), 0.25), ((3, 5), 0.5), ((2, 2), 1.0), ((4, 3), 1 / 16)])
def test_equal_to_torchvision_float32(output_size, scale, sampling_ratio, aligned):
    rng = np.random.default_rng(abs(hash((output_size, scale, sampling_ratio, aligned))) % 2**32)
    features = rng.normal(size=SHAPE).astype(np.float32)
    rois = rois_for(int(scale * 100) + sampling_ratio)
    if scale < 0.1:
        rois[:, 1:] *= 4  # RoIs of the same size on the map
    cot = rng.normal(size=(len(rois), *output_size, SHAPE[3])).astype(np.float32)
    expected, expected_grad = torchvision_align(features, rois, output_size, scale, sampling_ratio, aligned, cot)
    out, vjp = jax.vjp(lambda f: roi_align(f, rois, output_size, scale, sampling_ratio, aligned), jnp.asarray(features))
    grad = vjp(jnp.asarray(cot))[0]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("aligned", [False, True])
def test_float16_within_its_rounding_of_torchvision_float32_and_closer_than_torchvision_float16(aligned):
    # torchvision's CPU kernel rounds each of the ~20 operations of a sample to float16 (its
    # sample positions too); jaxdet computes in float32 and rounds once. Against torchvision in
    # float32 on the same float16 values: jaxdet within float16's rounding, and never farther
    # than torchvision's own float16 result.
    rng = np.random.default_rng(5)
    features = rng.normal(size=SHAPE).astype(np.float16)
    # torchvision takes the RoIs in the features' dtype: give both the same float16-rounded ones,
    # none beyond float16's range (1e5 would be inf there).
    rois = rois_for(9)
    rois = rois[np.all(np.abs(rois) < 6e4, axis=1)].astype(np.float16).astype(np.float32)
    cot = rng.normal(size=(len(rois), 3, 4, SHAPE[3])).astype(np.float16)
    exact, exact_grad = torchvision_align(features.astype(np.float32), rois, (3, 4), 0.25, 2, aligned,
                                          cot.astype(np.float32))
    half, half_grad = torchvision_align(features, rois, (3, 4), 0.25, 2, aligned, cot)
    out, vjp = jax.vjp(lambda f: roi_align(f, rois, (3, 4), 0.25, 2, aligned), jnp.asarray(features))
    grad = vjp(jnp.asarray(cot))[0]
    assert out.dtype == jnp.float16 and grad.dtype == jnp.float16
    for ours, theirs, truth in ((out, half, exact), (grad, half_grad, exact_grad)):
        ours, theirs = np.asarray(ours, np.float32), theirs.astype(np.float32)
        np.testing.assert_allclose(ours, truth, rtol=2.0**-11, atol=2.0**-24)
        assert np.abs(ours - truth).max() <= np.abs(theirs - truth).max()
