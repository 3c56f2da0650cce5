"""What several test files share, in one module (the independent implementations they check
against live in references/). Imported as `helpers` (pyproject's pythonpath puts tests/ on
sys.path); its asserts are rewritten by pytest (conftest.py registers it). jaxdet is imported
inside the functions that need it.

- REPO: the checkout's root.
- The `jaxdet` command in this process: `run`, `assert_one_paragraph`.
- A tiny training set-up: `load_config`, `synthetic_batch`, `small_state`.
- torchvision's detection weights written without torch: `write_torchvision_fpn` (tests/inference,
  tests/training).
- RoI pooling cases: `random_rois`, `distinct_features`, `assert_same`, `ADVERSARIAL_ROIS`, the
  PRODUCT_* grid, `exact_sum_cotangent`, `product_features`.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------
# The `jaxdet` command, run in this process (tests/cli, tests/inference).

def run(capsys, *argv):
    """(exit status, stdout, stderr) of `jaxdet ARGV`."""
    from jaxdet import cli

    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_paragraph(err: str, *phrases: str) -> str:
    """The error is a single paragraph (no traceback) that contains each phrase."""
    assert "Traceback" not in err
    text = " ".join(err.split())
    assert text.startswith("jaxdet: error:"), err
    assert "\n\n" not in err.strip()
    for phrase in phrases:
        assert phrase in text, f"{phrase!r} not in: {text}"
    return text


# ---------------------------------------------------------------------------------------------
# A tiny training set-up (tests/training, tests/models).

def load_config(name="tiny_shapes", variant="smoke"):
    from jaxdet import configs

    return configs.load_config(f"{name}:{variant}")


# Class k is a filled square of colour COLOURS[k] on a grey, noisy background.
COLOURS = np.array([[1.5, -1.5, -1.5], [-1.5, 1.5, -1.5], [-1.5, -1.5, 1.5]], np.float32)


def synthetic_batch(seed, *, num_images=2, size=64, max_boxes=8):
    """A batch in the pipeline's format: 1-2 squares of 14-30 px per image, exact boxes."""
    rng = np.random.default_rng(seed)
    batch = {"images": rng.normal(0.0, 0.2, (num_images, size, size, 3)).astype(np.float32),
             "boxes": np.zeros((num_images, max_boxes, 4), np.float32),
             "labels": np.zeros((num_images, max_boxes), np.int32),
             "valid": np.zeros((num_images, max_boxes), bool),
             "image_hw": np.full((num_images, 2), size, np.int32),
             "scale": np.ones((num_images,), np.float32)}
    for i in range(num_images):
        taken = np.zeros((size, size), bool)
        for j in range(rng.integers(1, 3)):
            for _ in range(100):  # non-overlapping placement
                side = int(rng.integers(14, 31))
                x, y = (int(v) for v in rng.integers(0, size - side, 2))
                if not taken[y:y + side, x:x + side].any():
                    break
            taken[y:y + side, x:x + side] = True
            label = int(rng.integers(0, 3))
            batch["images"][i, y:y + side, x:x + side] = COLOURS[label]
            batch["boxes"][i, j] = (x, y, x + side, y + side)
            batch["labels"][i, j] = label
            batch["valid"][i, j] = True
    return batch


def small_state(step, ballast_mb=0):
    """A TrainState of a few arrays (no model): atomicity does not depend on what is saved."""
    from jaxdet.training import TrainState

    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    if ballast_mb:
        params["ballast"] = jnp.ones((ballast_mb, 256, 1024))
    return TrainState(step=jnp.int32(step), params=params, model_state={}, opt_state=({"mu": params["w"] * 2},),
                      rng=jax.random.PRNGKey(step), model=None, settings=None, tx=None, learning_rate_fn=None)


def write_torchvision_fpn(path, variables, model):
    """Writes an `FPNFasterRCNN`'s variables as torchvision's detection state dict (`.pth`, no torch:
    references/pth_writer): OIHW convolutions, [out, in] linear layers, fc6's rows in torch's (C, 7, 7)
    flatten order, the current torchvision names."""
    from flax import traverse_util
    from references.pth_writer import tensor, write_pth

    from jaxdet.models.torchvision_detection import _torch_names

    state = {}
    for key, (name, value) in enumerate(traverse_util.flatten_dict(jax.device_get(variables)).items()):
        names, leaf = _torch_names(name[1:])
        value = np.asarray(value, np.float32)
        if leaf == "kernel" and value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)
        elif leaf == "kernel":
            if name[2] in ("fc6", "fc0"):
                c = model.fpn_channels
                value = value.reshape(7, 7, c, -1).transpose(2, 0, 1, 3).reshape(49 * c, -1)
            value = value.T
        state[names[0]] = tensor(str(key), np.ascontiguousarray(value))
    write_pth(path, state)
    return path


# ---------------------------------------------------------------------------------------------
# RoI pooling cases (tests/xla_ops/test_roi_pool*.py).

def random_rois(rng, num, num_images, extent, *, spread=0.25):
    """[num, 5] RoIs in input pixels spanning a map of `extent` = (height, width) pixels."""
    height, width = extent
    x1 = rng.uniform(-spread * width, width, num)
    y1 = rng.uniform(-spread * height, height, num)
    x2 = x1 + rng.uniform(0, width * 0.8, num)
    y2 = y1 + rng.uniform(0, height * 0.8, num)
    batch = rng.integers(0, num_images, num)
    return np.stack([batch, x1, y1, x2, y2], 1).astype(np.float32)


def distinct_features(rng, shape, dtype=np.float32):
    """Values without ties (a permutation), so gradients are unambiguous in any dtype."""
    values = rng.permutation(np.prod(shape)).reshape(shape)
    if dtype != np.float32:  # few distinct values fit in 16 bits: stay within them
        values = values % 2000 - 1000 + rng.random(shape) * 0.25
    return jnp.asarray(values.astype(np.float32) / 16, dtype=dtype)


def assert_same(a, b):
    """Same shape, dtype and bits (NaN payloads and the sign of zero included)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    # Values first, for a readable message (as float64: numpy's NaN handling misses bfloat16).
    values = (lambda x: x) if np.issubdtype(a.dtype, np.integer) else (lambda x: x.astype(np.float64))
    np.testing.assert_array_equal(values(a), values(b))
    bits = np.dtype(f"u{a.dtype.itemsize}")
    np.testing.assert_array_equal(a.view(bits), b.view(bits))


# RoIs that are invalid or extreme (the bad-input tests, and mixed into the comparisons).
ADVERSARIAL_ROIS = np.array([
    [-1, 0, 0, 8, 8],          # batch index below 0
    [2, 0, 0, 8, 8],           # batch index == N
    [1e9, 0, 0, 8, 8],         # far out of range
    [np.nan, 0, 0, 8, 8],      # NaN batch index
    [np.inf, 0, 0, 8, 8],
    [-0.5, 0, 0, 8, 8],        # truncates to 0 but is below 0: invalid
    [0.7, 0, 0, 8, 8],         # valid, image 0 (truncated toward zero)
    [0, np.nan, 0, 8, 8],      # NaN coordinate
    [0, 0, np.inf, 8, 8],
    [0, 0, 0, -np.inf, 8],
    [1, 9, 9, 2, 2],           # inverted
    [1, 5, 5, 4, 4],           # zero size (x2 + 1 == x1)
    [0, 1e6, 1e6, 2e6, 2e6],   # far outside the map
    [0, -2e6, -2e6, -1e6, -1e6],
    [1, -1e30, -1e30, 1e30, 1e30],  # huge: edges must be clamped before the integer cast
    [0, 3.4e38, 0, 3.4e38, 8],      # (x2 + 1) * scale may overflow to inf
    [1, 0, 0, 1e-40, 1e-40],   # subnormal coordinates
    [1, 2, 3, 5, 7],           # an ordinary RoI among them
], np.float32)


# The full product of output sizes, scales, roundings, layouts and dtypes (forward and gradient)
# on a small map with the adversarial rows among the RoIs.
PRODUCT_DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
PRODUCT_SIZES = [(7, 7), (2, 3), (1, 1)]
PRODUCT_SCALES = [1 / 16, 0.5, 1.0]
PRODUCT_SHAPE = (2, 8, 9, 33)  # NHWC; 33 channels: no multiple of a vector or channel block
PRODUCT_RANDOM_ROIS = 14  # then the 18 ADVERSARIAL_ROIS: 32 RoIs in all


def exact_sum_cotangent(rng, shape, dtype):
    """Multiples of 1/64 that `dtype` holds exactly, at most 32 in magnitude (4 for bfloat16):
    every float32 sum of fewer than 8192 of them is exact, whatever the summation order, so the
    gradient (the float32 sum rounded once to the dtype) is determined bit for bit."""
    bound = 255 if dtype == jnp.bfloat16 else 2047
    return jnp.asarray(rng.integers(-bound, bound + 1, shape) / 64, dtype)


def product_features(rng, dtype):
    features = np.array(distinct_features(rng, PRODUCT_SHAPE, dtype), np.float32)
    features[..., 1] = rng.integers(-2, 3, PRODUCT_SHAPE[:3])  # many ties
    features[1, 4, 5, 2] = np.nan  # NaN propagates (its bits are copied too)
    features[0, 3, 3, 3] = -np.inf
    return jnp.asarray(features, dtype)
