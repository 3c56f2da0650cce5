"""`xla_ops.amx.bf16_dot`, the products of bfloat16 matrices into float32 on the AMX tiles, against
float64 products of the same bfloat16 values (numpy) and XLA's dot, on shapes that exercise every
edge of the kernel's tiling: rows, columns and depths that are not multiples of the 16 x 32 tiles,
several chunks of the depth, several groups of rows, and b given transposed. `bf16_patch_dot`,
which reads an image's patches tile by tile, against `bf16_dot` of the written patches.

The tile kernel runs two ways (the `tile_kernel` fixture): on the CPU's AMX tiles where it has
them, and everywhere through the same kernel compiled against the emulation of the tile
instructions (csrc/tile_emulation.h, built by `make build`). The emulation itself is checked
against a numpy model of TDPBF16PS's order of sums (Intel SDM) and of the kernel's, and, where
the CPU has AMX, against the tiles bit for bit."""

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from xla_ops.amx import _native
from xla_ops.amx.products import bf16_dot, bf16_dot_reference, bf16_patch_dot, bf16_patch_dot_reference

needs_amx = pytest.mark.skipif(not _native.amx_usable(),
                               reason=f"no AMX products here: {_native.why_amx_not_usable()}")
needs_emulation = pytest.mark.skipif(not _native.emulation_built(), reason=_native.why_emulation_not_built())


@pytest.fixture(params=[pytest.param("amx", marks=needs_amx), pytest.param("emulated", marks=needs_emulation)])
def tile_kernel(request):
    """The tile kernel on the CPU's AMX tiles, or through the tile emulation. The choice is made
    when a function is traced: the tests jit fresh lambdas (jit caches traces by function)."""
    with _native.emulated_tiles() if request.param == "emulated" else contextlib.nullcontext():
        yield request.param


def operands(m, k, n, transposed, seed=0, integers=False):
    rng = np.random.default_rng(seed)
    draw = (lambda shape: rng.integers(-4, 5, shape)) if integers else rng.standard_normal
    a = jnp.asarray(draw((m, k)), jnp.bfloat16)
    b = jnp.asarray(draw((n, k) if transposed else (k, n)), jnp.bfloat16)
    return a, b


def exact_product(a, b, transposed):
    """float64 a @ b of the bfloat16 values, and |a| @ |b| (the scale of its rounding error)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if transposed:
        b64 = b64.T
    return a64 @ b64, np.abs(a64) @ np.abs(b64)


def native(a, b, transposed):
    return jax.jit(lambda a, b: bf16_dot(a, b, b_transposed=transposed))(a, b)


# (M, K, N): tiles are 16 rows x 32 depth, blocks 32 x 32; the depth comes in chunks of about
# 16384 for 32 columns; rows in groups of 256 blocks for 32 columns.
SHAPES = [(1, 1, 1), (16, 32, 16), (32, 64, 32), (17, 33, 15), (5, 7, 3), (33, 65, 47), (100, 2, 70),
          (3, 300, 200), (40, 20000, 20), (9000, 40, 20)]


@pytest.mark.parametrize("transposed", [False, True], ids=["b", "b_transposed"])
@pytest.mark.parametrize("m, k, n", SHAPES)
def test_products_of_small_integers_are_exact(m, k, n, transposed, tile_kernel):
    """Sums of products of integers up to 16 stay exact in float32 whatever their order: every
    element must equal the float64 product, so a wrong row, column, pair or padding shows."""
    a, b = operands(m, k, n, transposed, integers=True)
    got = native(a, b, transposed)
    assert got.shape == (m, n) and got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got, np.float64), exact_product(a, b, transposed)[0])


@pytest.mark.parametrize("transposed", [False, True], ids=["b", "b_transposed"])
@pytest.mark.parametrize("m, k, n", SHAPES)
def test_products_are_within_float32_summation_error(m, k, n, transposed, tile_kernel):
    """Any order of K float32 sums is within K * 2^-24 * (|a| @ |b|) of the exact product (the
    products of two bfloat16 values are exact in float32)."""
    a, b = operands(m, k, n, transposed, seed=k)
    expected, scale = exact_product(a, b, transposed)
    error = np.abs(np.asarray(native(a, b, transposed), np.float64) - expected)
    assert np.all(error <= k * 2.0**-24 * scale)


def test_agrees_with_xla_dot_on_a_convolution_sized_product(tile_kernel):
    a, b = operands(1000, 576, 64, False, seed=3)
    np.testing.assert_allclose(native(a, b, False), bf16_dot_reference(a, b), rtol=1e-5, atol=1e-4)


def test_nan_and_inf_stay_in_their_row_and_column(tile_kernel):
    """A NaN in a poisons only its row of c, an infinity in b only its column: the zero padding
    of the edge tiles never multiplies them into other elements."""
    a, b = operands(35, 70, 33, False, seed=1)
    a = a.at[20, 69].set(jnp.nan)  # last depth, in the edge tile of rows 16-31
    b = b.at[69, 32].set(jnp.inf)  # b's last row and column
    got = np.asarray(native(a, b, False))
    nan_rows = np.isnan(got).all(axis=1)
    assert nan_rows[20] and nan_rows.sum() == 1
    rest = np.delete(got, 20, axis=0)
    assert np.isinf(rest[:, 32]).all() and np.isfinite(np.delete(rest, 32, axis=1)).all()


def test_denormal_operands_count_as_zero_as_in_xla_dot(tile_kernel):
    """bfloat16 values below float32's normal range (under 2^-126) are read as zero, by the AMX
    instruction as by XLA's CPU dot (bf16_dot's docstring says so); normal ones are not."""
    a = jnp.full((2, 4), 2.0**-130, jnp.bfloat16).at[1].set(2.0**-120)
    b = jnp.ones((4, 3), jnp.bfloat16)
    expected = np.array([[0.0] * 3, [4 * 2.0**-120] * 3])
    np.testing.assert_array_equal(native(a, b, False), expected)
    np.testing.assert_array_equal(bf16_dot_reference(a, b), expected)


def test_empty_shapes(tile_kernel):
    a, b = operands(5, 0, 3, False)
    np.testing.assert_array_equal(native(a, b, False), np.zeros((5, 3)))  # K = 0: sums of nothing
    assert native(*operands(0, 4, 3, False), False).shape == (0, 3)
    assert native(*operands(5, 4, 0, True), True).shape == (5, 0)


def test_xla_bfloat16_dots_chained_with_it_in_one_program(tile_kernel):
    """The kernel puts back the tile configuration a thread had: XLA's own bfloat16 dots (its
    libraries use the tiles too) that run before and after it in one program, each depending on
    the one before, give what the same chain gives with XLA's dot alone."""
    a, b = operands(200, 96, 64, False, seed=4)
    b2, b3 = operands(64, 64, 64, False, seed=5)

    def chain(dot):
        x = lax.dot(a, b, preferred_element_type=jnp.float32)          # XLA
        y = dot(x.astype(jnp.bfloat16), b2)                             # ours or XLA
        return lax.dot(y.astype(jnp.bfloat16), b3, preferred_element_type=jnp.float32)  # XLA

    ours = jax.jit(lambda: chain(bf16_dot))()
    xla = jax.jit(lambda: chain(bf16_dot_reference))()
    assert _native.TARGETS[tile_kernel][0] in jax.jit(lambda: chain(bf16_dot)).lower().as_text()
    # Sums in another order, rounded to bfloat16 between the products: within a few bfloat16 steps.
    np.testing.assert_allclose(ours, xla, rtol=2e-2, atol=2e-2 * float(jnp.abs(xla).max()))


@pytest.fixture
def without_amx(monkeypatch):
    """No tile kernel (XLA's dot), on any CPU. The choice is made when a function is traced: the
    tests jit fresh lambdas (jit caches traces by function)."""
    monkeypatch.setattr(_native, "kernel", lambda: None)


def test_without_amx_it_is_xla_dot(without_amx):
    a, b = operands(20, 40, 10, True, seed=5)
    np.testing.assert_array_equal(native(a, b, True), bf16_dot_reference(a, b, b_transposed=True))
    assert "custom_call" not in jax.jit(lambda a, b: bf16_dot(a, b, b_transposed=True)).lower(a, b).as_text()


def test_bad_arguments_are_named():
    a, b = operands(4, 6, 5, False)
    with pytest.raises(ValueError, match="must be matrices"):
        bf16_dot(a[None], b)
    with pytest.raises(TypeError, match="must be bfloat16, got float32 and bfloat16"):
        bf16_dot(a.astype(jnp.float32), b)
    with pytest.raises(ValueError, match=r"a \(4, 6\) and b \(6, 5\) \(transposed\) do not chain"):
        bf16_dot(a, b, b_transposed=True)


def patch_operands(shape, size, out_channels, seed=0):
    keys = jax.random.split(jax.random.key(seed), 2)
    x = jax.random.normal(keys[0], shape, jnp.bfloat16)
    return x, jax.random.normal(keys[1], (size, size, shape[3], out_channels), jnp.bfloat16)


@pytest.mark.parametrize("shape, size, out_channels", [
    ((1, 5, 7, 32), 3, 16),     # rows narrower than a tile: every tile gathered
    ((1, 4, 16, 32), 3, 32),    # a tile per image row
    ((2, 9, 37, 64), 3, 40),    # tiles across image rows and images, in place in between
    ((1, 3, 40, 96), 5, 33),    # a 5x5 window: taps two pixels out
    ((1, 6, 20, 32), 1, 30),    # 1x1: every tile inside the image
    ((3, 1, 1, 32), 3, 8),      # 1x1 images: every tap but the centre outside
    ((1, 8, 20, 352), 7, 20),   # K = 17248: two K chunks (of at most 16384 for 32 columns)
])
def test_patch_dot_equals_the_product_of_the_written_patches_bit_for_bit(shape, size, out_channels, tile_kernel):
    """The same products, summed in the same order as `bf16_dot` over the patches
    `image_patches` writes: equal in every bit, NaN and zero padding included."""
    x, kernel = patch_operands(shape, size, out_channels)
    x = x.at[0, -1, -1, 0].set(jnp.nan)  # its patches' rows become NaN, the others must not
    patch_dot = jax.jit(lambda x, kernel: bf16_patch_dot(x, kernel))  # a fresh trace
    got = patch_dot(x, kernel)
    want = jax.jit(lambda x, kernel: bf16_patch_dot_reference(x, kernel))(x, kernel)
    assert got.shape == (x.shape[0] * x.shape[1] * x.shape[2], out_channels) and got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got).view(np.uint32), np.asarray(want).view(np.uint32))
    assert _native.TARGETS[tile_kernel][1] in patch_dot.lower(x, kernel).as_text()


def assert_written_patches(x, kernel):
    """bf16_patch_dot(x, kernel) is the reference, without the custom call (fresh traces)."""
    patch_dot = jax.jit(lambda x, kernel: bf16_patch_dot(x, kernel))
    assert "bf16_patch_dot" not in patch_dot.lower(x, kernel).as_text()
    reference = jax.jit(lambda x, kernel: bf16_patch_dot_reference(x, kernel))
    np.testing.assert_array_equal(patch_dot(x, kernel), reference(x, kernel))


def test_patch_dot_with_other_channels_is_the_written_patches(tile_kernel):
    assert_written_patches(*patch_operands((1, 5, 6, 24), 3, 7))  # 24 channels: not whole tiles


def test_patch_dot_without_the_tiles_is_the_written_patches(without_amx):
    assert_written_patches(*patch_operands((1, 5, 6, 32), 3, 7))


def test_patch_dot_bad_arguments_are_named():
    x, kernel = patch_operands((1, 4, 4, 32), 3, 5)
    with pytest.raises(ValueError, match=r"kernel \[k, k, C, O\] with k odd"):
        bf16_patch_dot(x, kernel[:2, :2])
    with pytest.raises(TypeError, match="must be bfloat16, got float32 and bfloat16"):
        bf16_patch_dot(x.astype(jnp.float32), kernel)
    with pytest.raises(ValueError, match=r"input channels \(16\) are not x's \(32\)"):
        bf16_patch_dot(x, kernel[:, :, :16])


def kernel_model(a, b):
    """a [M, K] @ b [K, N] summed in float32 (numpy) as the tile kernel sums: per 32-deep step of K
    (zero-padded), TDPBF16PS as the Intel SDM's pseudocode for it gives, two float32 sums per
    element of c, of the even and the odd elements of the pairs along K, each from zero and in
    the order of K (the products of bfloat16 values are exact in float32); then
    c += (even + odd), the steps in the order of K."""
    a32, b32 = np.asarray(a, np.float32), np.asarray(b, np.float32)
    m, k = a32.shape
    steps = -(-k // 32)
    a32 = np.pad(a32, ((0, 0), (0, 32 * steps - k)))
    b32 = np.pad(b32, ((0, 32 * steps - k), (0, 0)))
    c = np.zeros((m, b32.shape[1]), np.float32)
    for step in range(steps):
        even = np.zeros_like(c)
        odd = np.zeros_like(c)
        for pair in range(16):
            k0 = 32 * step + 2 * pair
            even = even + a32[:, k0, None] * b32[None, k0, :]
            odd = odd + a32[:, k0 + 1, None] * b32[None, k0 + 1, :]
        c = c + (even + odd)
    return c


@needs_emulation
@pytest.mark.parametrize("m, k, n", [(16, 32, 16), (40, 100, 50), (33, 65, 47)])
def test_the_emulation_sums_in_the_order_of_the_sdm_pseudocode(m, k, n):
    """Normal random operands, whose float32 sums depend on their order: the emulated kernel gives
    the numpy model of TDPBF16PS's sums (and the kernel's steps) in every bit."""
    a, b = operands(m, k, n, False, seed=m)
    with _native.emulated_tiles():
        got = np.asarray(jax.jit(lambda a, b: bf16_dot(a, b))(a, b))
    want = kernel_model(a, b)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    # The order shows: a plain sequential float32 sum differs somewhere.
    sequential = np.zeros_like(want)
    for i in range(k):
        sequential = sequential + np.asarray(a, np.float32)[:, i, None] * np.asarray(b, np.float32)[None, i, :]
    assert not np.array_equal(sequential, want)


def test_results_below_float32_normal_range_are_flushed_to_zero(tile_kernel):
    """TDPBF16PS flushes denormal results to zero (FTZ): 2^-70 * 2^-60 = 2^-130 comes out as 0,
    2^-63 * 2^-63 = 2^-126 (float32's least normal) stays."""
    a = jnp.array([[2.0**-70], [2.0**-63], [-(2.0**-70)]], jnp.bfloat16)
    b = jnp.array([[2.0**-60, 2.0**-63]], jnp.bfloat16)
    got = np.asarray(native(a, b, False))
    np.testing.assert_array_equal(got, [[0.0, 0.0], [2.0**-123, 2.0**-126], [0.0, 0.0]])


@needs_amx
@needs_emulation
@pytest.mark.parametrize("m, k, n, transposed", [(33, 65, 47, False), (100, 300, 70, True), (40, 20000, 20, False)])
def test_the_emulation_equals_the_tiles_bit_for_bit(m, k, n, transposed):
    """The kernel on the CPU's AMX tiles and through the emulation: the same bits, with sums whose
    order matters and NaN, infinity and values that round to denormals among the operands."""
    a, b = operands(m, k, n, transposed, seed=k)
    a = a.at[3, 5].set(jnp.nan).at[7].multiply(2.0**-60)
    b = b.at[(1, 2) if transposed else (2, 1)].set(jnp.inf).at[:, 3].multiply(2.0**-70)
    hardware = np.asarray(native(a, b, transposed))
    with _native.emulated_tiles():
        emulated = np.asarray(native(a, b, transposed))
    np.testing.assert_array_equal(hardware, emulated)  # NaN where NaN
    finite = np.isfinite(hardware)
    np.testing.assert_array_equal(hardware[finite].view(np.uint32), emulated[finite].view(np.uint32))
    x, kernel = patch_operands((2, 9, 37, 64), 3, 40, seed=1)
    patch_dot = lambda: jax.jit(lambda x, kernel: bf16_patch_dot(x, kernel))(x, kernel)  # noqa: E731
    hardware = np.asarray(patch_dot())
    with _native.emulated_tiles():
        emulated = np.asarray(patch_dot())
    np.testing.assert_array_equal(hardware.view(np.uint32), emulated.view(np.uint32))


@pytest.mark.parametrize("b_batched", [True, False], ids=["both_mapped", "b_shared"])
def test_vmap_is_the_product_of_each_element(b_batched, tile_kernel):
    """jax.vmap over the custom calls (one call per mapped element): the per-element products, bit
    for bit."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((3, 20, 40)), jnp.bfloat16)
    b = jnp.asarray(rng.standard_normal((3, 40, 24) if b_batched else (40, 24)), jnp.bfloat16)
    got = jax.jit(jax.vmap(lambda a, b: bf16_dot(a, b), in_axes=(0, 0 if b_batched else None)))(a, b)
    want = [jax.jit(lambda a, b: bf16_dot(a, b))(a[i], b[i] if b_batched else b) for i in range(3)]
    np.testing.assert_array_equal(np.asarray(got).view(np.uint32), np.stack(want).view(np.uint32))
    x, kernel = patch_operands((1, 4, 17, 32), 3, 8)
    xs = jnp.stack([x, -x, 2 * x])
    got = jax.jit(jax.vmap(lambda x: bf16_patch_dot(x, kernel)))(xs)
    want = np.stack([jax.jit(lambda x: bf16_patch_dot(x, kernel))(x) for x in xs])
    np.testing.assert_array_equal(np.asarray(got).view(np.uint32), want.view(np.uint32))


def test_without_the_extensions_it_reports_and_falls_back(monkeypatch):
    """As after a failed (optional) build: `available()` says why not, and the ops are XLA's."""
    import functools

    import xla_ops.amx

    monkeypatch.setattr(_native, "_load_module", lambda name, platform: (False, f"{name} is not built (test)"))
    monkeypatch.setattr(_native, "amx_usable", functools.cache(_native.amx_usable.__wrapped__))
    assert not xla_ops.amx.available()
    assert xla_ops.amx.why_unavailable() == "xla_ops.amx._patches_cpu is not built (test)"
    assert _native.kernel() is None and not _native.emulation_built()
    a, b = operands(20, 40, 10, False, seed=6)
    assert "custom_call" not in jax.jit(lambda a, b: bf16_dot(a, b)).lower(a, b).as_text()
    np.testing.assert_array_equal(jax.jit(lambda a, b: bf16_dot(a, b))(a, b), bf16_dot_reference(a, b))
    x = jnp.ones((1, 3, 4, 32), jnp.bfloat16)
    assert "custom_call" not in jax.jit(lambda x: xla_ops.amx.image_patches(x, 3)).lower(x).as_text()
    assert xla_ops.amx.layers_for(jnp.bfloat16, cpu_bf16_kernels=True) == (nn.Conv, nn.Dense)
