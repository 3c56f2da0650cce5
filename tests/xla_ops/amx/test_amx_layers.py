"""Convolutions as bfloat16 matrix products over image patches (`xla_ops.amx.image_patches`,
`xla_ops.amx.layers`): the native patches against the jnp reference and hand-written cases,
`patch_conv` and its two gradients against XLA's convolution of the same bfloat16-rounded
operands, and which convolutions take that path; `bfloat16_matmul` and its gradients against
float32 products of the rounded operands, and the fully connected layers made of it; under
`jax.vmap` and, with their gradients, inside `jax.shard_map`. The products run three ways:
through `xla_ops.amx.bf16_dot` on the AMX tiles, through the same kernel on the tile emulation,
and through XLA's dot. And the choice of layers a model makes (`layers_for`, `build_model`)."""

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from jaxdet.compiler_options import jit
from jaxdet.models.backbones import VGG
from xla_ops.amx import _native
from xla_ops.amx.layers import (Conv, Dense, bfloat16_matmul, conv_general_dilated, layers_for, patch_conv,
                                takes_patch_path)
from xla_ops.amx.patches import image_patches, image_patches_reference

needs_native = pytest.mark.skipif(not _native.patches_built(),
                                  reason=f"patches op not built: {_native.why_patches_not_built()}")
IMPLS = [pytest.param(image_patches, marks=needs_native, id="native"),
         pytest.param(image_patches_reference, id="reference")]


@pytest.fixture(params=[
    pytest.param("amx", marks=pytest.mark.skipif(not _native.amx_usable(), reason="no AMX products here")),
    pytest.param("emulated", marks=pytest.mark.skipif(not _native.emulation_built(),
                                                      reason=_native.why_emulation_not_built())),
    pytest.param("xla_dot")])
def products(request, monkeypatch):
    """The layers' products on the AMX tiles (`xla_ops.amx.bf16_dot`), on the tile emulation, or
    through XLA's dot. The choice is made when a function is traced: tests using this jit a fresh
    lambda (jit caches traces by function)."""
    if request.param == "xla_dot":
        monkeypatch.setattr(_native, "kernel", lambda: None)
    with _native.emulated_tiles() if request.param == "emulated" else contextlib.nullcontext():
        yield request.param


def bits(x):
    return np.asarray(x).view(np.uint16)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("transposed", [False, True])
def test_hand_case(impl, transposed):
    # A 2x2 image of one channel, values 1..4; the 3x3 patches, zero outside, taps row-major.
    x = jnp.arange(1.0, 5.0).reshape(1, 2, 2, 1)
    expected = np.array([[0, 0, 0, 0, 1, 2, 0, 3, 4],
                         [0, 0, 0, 1, 2, 0, 3, 4, 0],
                         [0, 1, 2, 0, 3, 4, 0, 0, 0],
                         [1, 2, 0, 3, 4, 0, 0, 0, 0]], np.float32)
    out = jax.jit(lambda x: impl(x, 3, transposed=transposed))(x)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out, np.float32), expected.T if transposed else expected)


@needs_native
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("shape, size", [((2, 5, 7, 3), 3), ((1, 4, 4, 40), 1), ((1, 6, 9, 33), 5),
                                         ((1, 1, 1, 2), 3), ((3, 2, 1, 4), 3), ((1, 3, 2, 1), 7)])
def test_native_equals_reference(shape, size, transposed, dtype):
    x = jax.random.normal(jax.random.key(sum(shape) + size), shape).astype(dtype)
    native = jax.jit(lambda x: image_patches(x, size, transposed=transposed))(x)
    reference = image_patches_reference(x, size, transposed=transposed)
    assert native.shape == reference.shape and native.dtype == reference.dtype == jnp.bfloat16
    np.testing.assert_array_equal(bits(native), bits(reference))


@needs_native
@pytest.mark.parametrize("transposed", [False, True])
def test_rounds_as_astype(transposed):
    # Ties round to even (1 + 2^-8 -> 1, 1 + 3 * 2^-8 -> 1 + 2^-6), NaNs stay NaNs, infinities,
    # signed zeros, subnormals and the largest floats (which round to infinity) as XLA converts.
    special = np.array([1 + 2**-8, 1 + 3 * 2**-8, np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0,
                        1e-40, -3e-39, 3.4e38, -3.4e38, 65504.0, 1 / 3, -2 / 3, 7.0], np.float32)
    x = jnp.asarray(special.reshape(1, 2, 2, 4))
    out = jax.jit(lambda x: image_patches(x, 1, transposed=transposed))(x)
    expected = x.astype(jnp.bfloat16).reshape(4, 4)
    np.testing.assert_array_equal(bits(out.T if transposed else out), bits(expected))


@needs_native
def test_rounds_long_rows_as_astype():
    """Rows long enough for the vectorized rounding loop, with a tail: every exponent range, ties,
    the special values and NaNs with payloads, bit for bit as XLA converts. (The transposed patches
    are made from an image XLA has already rounded.)"""
    rng = np.random.default_rng(0)
    scales = np.ldexp(np.float32(1.0), rng.integers(-140, 120, 1500)).astype(np.float32)
    values = (rng.standard_normal(1500) * scales).astype(np.float32)
    ties = (1.0 + np.arange(1, 40, 2) * 2.0**-8).astype(np.float32)
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, 3.4e38], np.float32)
    values[:ties.size] = ties
    values[-special.size:] = special
    values.view(np.uint32)[700:704] = [0x7FA00000, 0xFF800001, 0x7F800100, 0xFFC12345]  # NaNs with payloads
    x = jnp.asarray(values.reshape(1, 3, 5, 100))
    out = jax.jit(lambda x: image_patches(x, 1))(x)
    np.testing.assert_array_equal(bits(out), bits(x.astype(jnp.bfloat16).reshape(15, 100)))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="size must be a positive odd number, got 2"):
        image_patches(jnp.zeros((1, 3, 3, 1)), 2)
    with pytest.raises(ValueError, match=r"x must be \[N, H, W, C\], got shape \(3, 3\)"):
        image_patches(jnp.zeros((3, 3)))
    with pytest.raises(TypeError, match="float32 or bfloat16, got int32"):
        image_patches(jnp.zeros((1, 3, 3, 1), jnp.int32))


def rounded(x):
    return x.astype(jnp.bfloat16).astype(jnp.float32)


def reference_conv(x, kernel):
    """XLA's float32 convolution, exact products: the stride-1 'same' convolution of patch_conv."""
    pad = kernel.shape[0] // 2
    return lax.conv_general_dilated(x, kernel, (1, 1), ((pad, pad), (pad, pad)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=lax.Precision.HIGHEST)


@needs_native
@pytest.mark.parametrize("shape, size, out_channels", [((2, 6, 5, 8), 3, 5), ((1, 7, 9, 3), 1, 4),
                                                       ((1, 5, 4, 6), 5, 2),
                                                       # channels of 32s: the AMX path reads the patches from x
                                                       ((1, 9, 20, 32), 3, 32), ((2, 4, 17, 32), 5, 64)])
def test_patch_conv_and_its_gradients_match_the_convolution_of_rounded_operands(shape, size, out_channels,
                                                                                products):
    kx, kk, kg = jax.random.split(jax.random.key(size), 3)
    x = jax.random.normal(kx, shape)
    kernel = jax.random.normal(kk, (size, size, shape[-1], out_channels))
    # A cotangent exact in bfloat16: the backward rounds it, as it rounds x and the kernel.
    cotangent = rounded(jax.random.normal(kg, shape[:3] + (out_channels,)))
    out, vjp = jax.vjp(jit(lambda x, kernel: patch_conv(x, kernel)), x, kernel)
    expected, expected_vjp = jax.vjp(reference_conv, rounded(x), rounded(kernel))
    assert out.dtype == jnp.float32
    # The same products of bfloat16 values, summed in float32 in another order.
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    for got, want in zip(vjp(cotangent), expected_vjp(cotangent)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def args_of(lhs_shape, kernel_shape, dtype, strides=(1, 1), padding=((1, 1), (1, 1)), dilation=None):
    return (jnp.zeros(lhs_shape, dtype), jnp.zeros(kernel_shape, dtype), strides, padding, None,
            dilation, ("NHWC", "HWIO", "NHWC"), 1)


@needs_native
def test_which_convolutions_take_the_patch_path():
    assert takes_patch_path(*args_of((1, 8, 8, 256), (3, 3, 256, 512), jnp.bfloat16))
    assert takes_patch_path(*args_of((1, 8, 8, 256), (3, 3, 256, 8), jnp.bfloat16, padding="SAME"))
    assert not takes_patch_path(*args_of((1, 8, 8, 256), (3, 3, 256, 512), jnp.float32))  # float32
    assert takes_patch_path(*args_of((1, 8, 8, 64), (3, 3, 64, 64), jnp.bfloat16))  # VGG16's conv1_2
    assert not takes_patch_path(*args_of((1, 8, 8, 32), (3, 3, 32, 32), jnp.bfloat16))  # too shallow
    assert not takes_patch_path(*args_of((1, 8, 8, 3), (3, 3, 3, 64), jnp.bfloat16))  # VGG16's conv1_1
    assert not takes_patch_path(*args_of((1, 8, 8, 256), (3, 3, 256, 8), jnp.bfloat16, strides=(2, 2)))
    assert not takes_patch_path(*args_of((1, 8, 8, 256), (3, 3, 256, 8), jnp.bfloat16, padding=((0, 0), (0, 0))))
    assert not takes_patch_path(*args_of((1, 8, 8, 256), (3, 3, 256, 8), jnp.bfloat16, dilation=(2, 2)))
    assert not takes_patch_path(*args_of((1, 8, 8, 4096), (1, 2, 4096, 8), jnp.bfloat16))  # not square
    # A batch split over a mesh: XLA partitions its own convolution, not a custom call.
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((2,), ("data",))):
        assert not takes_patch_path(*args_of((2, 8, 8, 256), (3, 3, 256, 512), jnp.bfloat16))


def compiled_text(fn, *args):
    return jit(fn).lower(*args).compile().as_text()


@needs_native
@pytest.mark.parametrize("channels, patched", [(256, True), (16, False)])
def test_flax_conv_in_bfloat16(channels, patched):
    """`Conv` has nn.Conv's parameters; in bfloat16 on the CPU it computes through the patches
    (deep inputs) or XLA's float32 convolution of the bfloat16 values (shallow ones), with a
    float32 result within bfloat16's rounding of nn.Conv in float32."""
    x = jax.random.normal(jax.random.key(0), (2, 6, 7, channels))
    ours, theirs = Conv(5, (3, 3), padding=1, dtype=jnp.bfloat16), nn.Conv(5, (3, 3), padding=1)
    variables = theirs.init(jax.random.key(1), x)
    assert jax.tree.structure(ours.init(jax.random.key(1), x)) == jax.tree.structure(variables)
    out = ours.apply(variables, x)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, theirs.apply(variables, x), rtol=3e-2, atol=3e-2)
    hlo = compiled_text(lambda v, x: ours.apply(v, x), variables, x)
    # The patches written out, or read from x by the AMX product.
    assert any(target in hlo for target in ("jaxdet_image_patches", "jaxdet_bf16_patch_dot")) == patched
    assert ("convolution(" in hlo) != patched


def test_float32_is_xla_convolution_unchanged():
    x = jax.random.normal(jax.random.key(0), (1, 5, 5, 256))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 256, 4))
    args = ((1, 1), ((1, 1), (1, 1)), None, None, ("NHWC", "HWIO", "NHWC"))
    np.testing.assert_array_equal(conv_general_dilated(x, kernel, *args), lax.conv_general_dilated(x, kernel, *args))


@needs_native
def test_bfloat16_vgg_trains_through_the_patches():
    """A VGG of the kit's `Conv` whose later stages are deep enough for the patch path: its
    gradient in bfloat16 is the float32 gradient within bfloat16's rounding, with a frozen first
    stage."""
    model = VGG(stages=((16,), (256, 256)), frozen_stages=1, conv=Conv)
    images = jax.random.normal(jax.random.key(0), (1, 12, 10, 3))
    variables = model.init(jax.random.key(1), images)

    def grads(dtype):
        loss = lambda v: (model.clone(dtype=dtype).apply(v, images).astype(jnp.float32) ** 2).mean()  # noqa: E731
        return jit(jax.grad(loss))(variables)

    assert "jaxdet_image_patches" in compiled_text(
        jax.grad(lambda v: model.clone(dtype=jnp.bfloat16).apply(v, images).astype(jnp.float32).mean()), variables)
    ours, theirs = grads(jnp.bfloat16), grads(jnp.float32)
    for name in ("conv2_1", "conv2_2"):
        for leaf in ("kernel", "bias"):
            got, want = ours["params"][name][leaf], theirs["params"][name][leaf]
            assert got.dtype == jnp.float32
            # Relative error of the whole gradient: bfloat16 keeps 8 significant bits; a wrong
            # tap, flip or transposition would be off by the order of the gradient itself.
            error = float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))
            assert error < 2e-2, (name, leaf, error)
    assert not np.any(ours["params"]["conv1_1"]["kernel"])  # frozen: no gradient



@pytest.mark.parametrize("m, k, n", [(5, 7, 3), (128, 300, 40), (1, 1, 1)])
def test_bfloat16_matmul_and_its_gradients_match_float32_products_of_rounded_operands(m, k, n, products):
    kx, kk, kg = jax.random.split(jax.random.key(m + k + n), 3)
    x, kernel = jax.random.normal(kx, (m, k)), jax.random.normal(kk, (k, n))
    cotangent = rounded(jax.random.normal(kg, (m, n)))  # exact in bfloat16, as the backward rounds it
    out, vjp = jax.vjp(jit(lambda x, kernel: bfloat16_matmul(x, kernel)), x, kernel)
    exact = lambda a, b: jnp.dot(a, b, precision=lax.Precision.HIGHEST)  # noqa: E731
    expected, expected_vjp = jax.vjp(exact, rounded(x), rounded(kernel))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    grads = vjp(cotangent)
    for got, want in zip(grads, expected_vjp(cotangent)):
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_bfloat16_matmul_gradients_take_the_operands_dtypes():
    x, kernel = jnp.ones((3, 4), jnp.float32), jnp.ones((4, 2), jnp.bfloat16)
    grad_x, grad_kernel = jax.grad(lambda x, k: bfloat16_matmul(x, k).sum(), (0, 1))(x, kernel)
    assert (grad_x.dtype, grad_kernel.dtype) == (jnp.float32, jnp.bfloat16)
    np.testing.assert_array_equal(grad_x, np.full((3, 4), 2.0))  # dx = 1 @ kernel^T, exact
    np.testing.assert_array_equal(grad_kernel.astype(jnp.float32), np.full((4, 2), 3.0))  # x^T @ 1


@needs_native
def test_flax_dense_in_bfloat16_on_the_cpu():
    """`Dense` has nn.Dense's parameters; in bfloat16 on the CPU it keeps float32 parameters,
    inputs and outputs, and multiplies bfloat16 operands (the kernel gradient's x^T made by the
    patches op); leading axes of the input are kept."""
    x = jax.random.normal(jax.random.key(0), (2, 3, 40))
    theirs = nn.Dense(6)
    variables = theirs.init(jax.random.key(1), x)

    def ours(v, x):
        return Dense(6, dtype=jnp.bfloat16).apply(v, x)

    assert jax.tree.structure(Dense(6, dtype=jnp.bfloat16).init(jax.random.key(1), x)) == jax.tree.structure(variables)
    out = ours(variables, x)
    assert out.dtype == jnp.float32 and out.shape == (2, 3, 6)
    np.testing.assert_allclose(out, theirs.apply(variables, x), rtol=3e-2, atol=3e-2)
    rounded_kernel = {"params": {**variables["params"], "kernel": rounded(variables["params"]["kernel"])}}
    np.testing.assert_allclose(out, theirs.apply(rounded_kernel, rounded(x)), rtol=1e-5, atol=1e-5)

    def loss(layer, v, x):
        return (layer(v, x) ** 2).sum()

    grads = jax.grad(loss, argnums=(1, 2))(ours, variables, x)
    rounded_x = rounded(x)  # the layer's products are of the rounded input and kernel
    exact = nn.Dense(6, precision=lax.Precision.HIGHEST)
    expected = jax.grad(loss, argnums=(1, 2))(exact.apply, rounded_kernel, rounded_x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(grads))
    # The backward rounds its cotangent 2 * out to bfloat16: within bfloat16's relative rounding.
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2 * float(np.abs(want).max()))
    hlo = compiled_text(jax.grad(lambda v, x: ours(v, x).sum()), variables, x)
    assert "jaxdet_image_patches" in hlo and "bf16[" in hlo
    # A batch split over a mesh: the same values through XLA's own transpose, which it partitions.
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((2,), ("data",))):
        hlo = compiled_text(jax.grad(lambda v, x: ours(v, x).sum()), variables, x)
        mesh_grads = jax.jit(jax.grad(loss, argnums=(1, 2)), static_argnums=0)(ours, variables, x)
    assert "jaxdet_image_patches" not in hlo and "bf16[" in hlo
    for got, want in zip(jax.tree.leaves(mesh_grads), jax.tree.leaves(grads)):
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # In float32 it is flax's layer, unchanged.
    np.testing.assert_array_equal(Dense(6, dtype=jnp.float32).apply(variables, x), theirs.apply(variables, x))


def test_dense_elsewhere_is_flax_dense(monkeypatch):
    """Off the CPU, flax's own bfloat16 layer; on a CPU without the patches op, float32 (the old
    behaviour: without the native x^T the kernel gradient would be slower than in float32)."""
    monkeypatch.setattr(_native, "current_platform", lambda: "gpu")
    layer = Dense(6, dtype=jnp.bfloat16)
    assert (layer.dtype, layer.dot_general) == (jnp.bfloat16, None)
    monkeypatch.setattr(_native, "current_platform", lambda: "cpu")
    monkeypatch.setattr(_native, "patches_built", lambda: False)
    layer = Dense(6, dtype=jnp.bfloat16)
    assert (layer.dtype, layer.dot_general) == (jnp.float32, None)


@needs_native
@pytest.mark.parametrize("transposed", [False, True])
def test_vmap_of_image_patches_is_the_patches_of_each_element(transposed):
    xs = jax.random.normal(jax.random.key(0), (3, 2, 5, 6, 4))
    got = jax.jit(jax.vmap(lambda x: image_patches(x, 3, transposed=transposed)))(xs)
    want = np.stack([image_patches_reference(x, 3, transposed=transposed) for x in xs])
    np.testing.assert_array_equal(bits(got), bits(want))


def test_vmap_of_patch_conv_and_its_gradient_is_per_element(products):
    """jax.vmap of `patch_conv` (channels of 32: the AMX path reads the patches from x) and of its
    gradient: the per-element results, bit for bit."""
    kx, kk = jax.random.split(jax.random.key(1))
    xs = jax.random.normal(kx, (2, 1, 5, 18, 32))
    kernel = jax.random.normal(kk, (3, 3, 32, 8))
    loss = lambda x, kernel: (patch_conv(x, kernel) ** 2).sum()  # noqa: E731
    got = jax.jit(jax.vmap(lambda x: patch_conv(x, kernel)))(xs)
    got_grads = jax.jit(jax.vmap(jax.grad(loss, (0, 1)), in_axes=(0, None)))(xs, kernel)
    for i, x in enumerate(xs):
        np.testing.assert_array_equal(got[i], jax.jit(lambda x: patch_conv(x, kernel))(x))
        for batched, single in zip(got_grads, jax.jit(jax.grad(loss, (0, 1)))(x, kernel)):
            np.testing.assert_array_equal(batched[i], single)


def test_vmap_of_the_gradient_of_bfloat16_matmul_is_per_element(products):
    kx, kk = jax.random.split(jax.random.key(2))
    xs, kernel = jax.random.normal(kx, (3, 20, 40)), jax.random.normal(kk, (40, 6))
    grad = jax.grad(lambda x, kernel: (bfloat16_matmul(x, kernel) ** 2).sum(), (0, 1))
    got = jax.jit(jax.vmap(grad, in_axes=(0, None)))(xs, kernel)
    for i, x in enumerate(xs):
        for batched, single in zip(got, jax.jit(grad)(x, kernel)):
            np.testing.assert_array_equal(batched[i], single)


@pytest.mark.parametrize("layer", ["patch_conv", "bfloat16_matmul"])
def test_gradients_inside_shard_map_are_those_outside(layer, products):
    """jax.grad inside jax.shard_map, its type check on (check_vma, the default), x split over the
    mesh and the kernel replicated: the custom calls' results vary as their operands do, and the
    kernel's gradient is summed over the mesh (here of one device: the gradient outside)."""
    kx, kk = jax.random.split(jax.random.key(3))
    if layer == "patch_conv":
        fn, x, kernel = patch_conv, jax.random.normal(kx, (2, 4, 17, 32)), jax.random.normal(kk, (3, 3, 32, 8))
    else:
        fn, x, kernel = bfloat16_matmul, jax.random.normal(kx, (8, 40)), jax.random.normal(kk, (40, 6))
    grad = jax.grad(lambda x, kernel: (fn(x, kernel) ** 2).sum(), (0, 1))
    mesh = jax.make_mesh((1,), ("data",))
    split, replicated = PartitionSpec("data"), PartitionSpec()
    sharded = jax.jit(jax.shard_map(grad, mesh=mesh, in_specs=(split, replicated), out_specs=(split, replicated)))
    got = sharded(jax.device_put(x, NamedSharding(mesh, split)), jax.device_put(kernel, NamedSharding(mesh, replicated)))
    for inside, outside in zip(got, jax.jit(grad)(x, kernel)):
        np.testing.assert_array_equal(inside, outside)


def test_layers_for_chooses_the_kit_only_when_asked_on_a_cpu_with_amx(monkeypatch):
    monkeypatch.setattr(_native, "amx_usable", lambda: True)
    monkeypatch.setattr(_native, "patches_built", lambda: True)
    assert layers_for(jnp.bfloat16, cpu_bf16_kernels=True) == (Conv, Dense)
    assert layers_for("bfloat16", cpu_bf16_kernels=True) == (Conv, Dense)
    assert layers_for(jnp.bfloat16, cpu_bf16_kernels=False) == (nn.Conv, nn.Dense)
    assert layers_for(jnp.float32, cpu_bf16_kernels=True) == (nn.Conv, nn.Dense)
    monkeypatch.setattr(_native, "current_platform", lambda: "cuda")
    assert layers_for(jnp.bfloat16, cpu_bf16_kernels=True) == (nn.Conv, nn.Dense)
    monkeypatch.setattr(_native, "current_platform", lambda: "cpu")
    monkeypatch.setattr(_native, "amx_usable", lambda: False)  # e.g. this CPU, without AMX
    assert layers_for(jnp.bfloat16, cpu_bf16_kernels=True) == (nn.Conv, nn.Dense)


@pytest.mark.parametrize("has_amx", [True, False])
def test_build_model_takes_the_layers_from_the_config(has_amx, monkeypatch):
    from jaxdet.configs import load_config
    from jaxdet.models.build import build_model

    monkeypatch.setattr(_native, "amx_usable", lambda: has_amx)
    monkeypatch.setattr(_native, "patches_built", lambda: True)
    config = load_config("tiny_shapes")
    assert config.model.cpu_bf16_kernels is False
    model = build_model(config)
    assert (model.conv, model.dense, model.backbone.conv, model.box_head.dense) == (nn.Conv, nn.Dense) * 2
    config.model.compute_dtype, config.model.cpu_bf16_kernels = "bfloat16", True
    model = build_model(config)
    conv, dense = (Conv, Dense) if has_amx else (nn.Conv, nn.Dense)
    assert (model.conv, model.dense, model.backbone.conv, model.box_head.dense) == (conv, dense) * 2


def optimized_hlo(fn, *args):
    """The optimized HLO of jit(fn)(*args) without metadata and names of origin."""
    import re
    text = jax.jit(fn).lower(*args).compile().as_text()
    text = re.sub(r", metadata=\{[^}]*\}", "", text)
    if "StackFrames" in text:
        text = text[text.find("\n\n", text.find("StackFrames")):]
    return re.sub(r", stack_frame_id=\d+", "", text)


def test_in_float32_the_kit_compiles_as_flax_layers():
    """In float32 the kit's layers are flax's, to the optimized HLO of a training gradient: a model
    built with them (as jaxdet's were before the choice) compiles as one built with flax's."""
    images = jax.random.normal(jax.random.key(0), (1, 12, 10, 3))

    def program(conv, dense):
        trunk = VGG(stages=((8,), (16, 16)), conv=conv)
        head = nn.Sequential([trunk, lambda x: x.reshape(1, -1), dense(4, dtype=jnp.float32)])
        variables = head.init(jax.random.key(1), images)
        return optimized_hlo(jax.grad(lambda v: (head.apply(v, images) ** 2).sum()), variables)

    assert program(Conv, Dense) == program(nn.Conv, nn.Dense)
