"""jaxdet's compiled programs use XLA's own CPU convolutions, not YNNPACK fusions
(`jaxdet.compiler_options`; the choice is measured in experiments/results/peers.md)."""

import jax
import jax.numpy as jnp
import pytest

from jaxdet import compiler_options
from jaxdet.configs import load_config
from jaxdet.inference import predict
from jaxdet.settings import DetectorSettings
from jaxdet.training import create_train_state

YNN_FUSION = '"kind":"__ynn_fusion"'


def conv_weight_gradient(x, w):
    conv = lambda w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.grad(lambda w: jnp.sum(conv(w) ** 2))(w)


@pytest.fixture(scope="module")
def jaxlib_fuses_for_ynnpack():
    if jax.default_backend() != "cpu":
        pytest.skip("the options concern XLA's CPU compiler")
    x, w = jnp.ones((1, 32, 32, 32)), jnp.ones((3, 3, 32, 32))
    if YNN_FUSION not in jax.jit(conv_weight_gradient).lower(x, w).compile().as_text():
        pytest.skip("this jaxlib makes no YNNPACK fusion of a convolution by default")


def test_jit_compiles_without_ynnpack_fusions(jaxlib_fuses_for_ynnpack):
    x, w = jnp.ones((1, 32, 32, 32)), jnp.ones((3, 3, 32, 32))
    compiled = compiler_options.jit(conv_weight_gradient).lower(x, w).compile()
    assert YNN_FUSION not in compiled.as_text()
    assert jnp.array_equal(compiled(x, w), jax.jit(conv_weight_gradient)(x, w))


def test_predict_is_compiled_with_the_options(jaxlib_fuses_for_ynnpack):
    config = load_config("tiny_shapes")
    state = create_train_state(config, jax.random.PRNGKey(0))
    images, image_hw = jnp.zeros((1, 64, 64, 3)), jnp.array([[64, 64]], jnp.int32)
    text = predict.lower(state.model, state.variables, images, image_hw,
                         settings=DetectorSettings.from_config(config)).compile().as_text()
    assert "convolution(" in text and YNN_FUSION not in text


def test_a_jaxdet_program_called_inside_another_jit_becomes_part_of_it(jaxlib_fuses_for_ynnpack):
    """JAX refuses compiler options on a nested jit; `compiler_options.jit` leaves them out there."""
    x, w = jnp.ones((1, 32, 32, 32)), jnp.ones((3, 3, 32, 32))
    program = compiler_options.jit(conv_weight_gradient)
    outer = jax.jit(lambda x, w: program(x, w) + 1)
    assert jnp.array_equal(outer(x, w), program(x, w) + 1)
    assert YNN_FUSION in outer.lower(x, w).compile().as_text()  # the outer program's own options
    assert jnp.array_equal(jax.vmap(program)(x[None], w[None])[0], program(x, w))
