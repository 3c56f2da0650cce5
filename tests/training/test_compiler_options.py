"""jaxdet's compiled programs leave convolutions to XLA's own CPU emitters and dots to YNNPACK
(`jaxdet.compiler_options`; the choice is measured in experiments/results/peers.md)."""

import re

import jax
import jax.numpy as jnp
import pytest

from jaxdet import compiler_options
from jaxdet.configs import load_config
from jaxdet.inference import predict
from jaxdet.settings import DetectorSettings
from jaxdet.training import create_train_state


def ynn_fused_ops(hlo_text):
    """The opcodes (convolution, dot) found in the computations that YNNPACK fusions call."""
    called = set(re.findall(r'calls=%([\w.-]+)[^\n]*"kind":"__ynn_fusion"', hlo_text))
    ops = set()
    for name in called:
        body = re.search(r"^%s [^\n]*\{\n(.*?)^\}" % re.escape("%" + name), hlo_text, re.M | re.S)
        ops |= {op for op in ("convolution", "dot") if re.search(rf"\b{op}\(", body.group(1))}
    return ops


def conv_weight_gradient(x, w):
    conv = lambda w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.grad(lambda w: jnp.sum(conv(w) ** 2))(w)


def dense_gradient(x, w):
    return jax.grad(lambda w: jnp.sum((x @ w) ** 2))(w)


X, W = jnp.ones((1, 32, 32, 32)), jnp.ones((3, 3, 32, 32))
A, B = jnp.ones((128, 512)), jnp.ones((512, 256))


@pytest.fixture(scope="module")
def jaxlib_fuses_for_ynnpack():
    if jax.default_backend() != "cpu":
        pytest.skip("the options concern XLA's CPU compiler")
    if not compiler_options.options_accepted():
        pytest.skip("this jaxlib does not know the options: jaxdet compiles without them")
    if "convolution" not in ynn_fused_ops(jax.jit(conv_weight_gradient).lower(X, W).compile().as_text()):
        pytest.skip("this jaxlib makes no YNNPACK fusion of a convolution by default")


def test_convolutions_leave_ynnpack_and_dots_stay(jaxlib_fuses_for_ynnpack):
    conv = compiler_options.jit(conv_weight_gradient).lower(X, W).compile()
    assert "convolution(" in conv.as_text() and ynn_fused_ops(conv.as_text()) == set()
    assert jnp.array_equal(conv(X, W), jax.jit(conv_weight_gradient)(X, W))
    assert ynn_fused_ops(compiler_options.jit(dense_gradient).lower(A, B).compile().as_text()) == {"dot"}


def test_predict_is_compiled_with_the_options(jaxlib_fuses_for_ynnpack):
    config = load_config("tiny_shapes")
    state = create_train_state(config, jax.random.PRNGKey(0))
    images, image_hw = jnp.zeros((1, 64, 64, 3)), jnp.array([[64, 64]], jnp.int32)
    text = predict.lower(state.model, state.variables, images, image_hw,
                         settings=DetectorSettings.from_config(config)).compile().as_text()
    assert "convolution(" in text and ynn_fused_ops(text) == {"dot"}


def test_a_jaxdet_program_called_inside_another_jit_becomes_part_of_it(jaxlib_fuses_for_ynnpack):
    """JAX refuses compiler options on a nested jit; `compiler_options.jit` leaves them out there."""
    program = compiler_options.jit(conv_weight_gradient)
    outer = jax.jit(lambda x, w: program(x, w) + 1)
    assert jnp.array_equal(outer(X, W), program(X, W) + 1)
    assert "convolution" in ynn_fused_ops(outer.lower(X, W).compile().as_text())  # the outer program's options
    assert jnp.array_equal(jax.vmap(program)(X[None], W[None])[0], program(X, W))


@pytest.fixture
def refused_options(monkeypatch):
    """COMPILER_OPTIONS with an option no XLA knows, `options_accepted` asked afresh (and its
    answer for the real options restored afterwards)."""
    monkeypatch.setattr(compiler_options, "COMPILER_OPTIONS", {"xla_jaxdet_no_such_option": "1"})
    compiler_options.options_accepted.cache_clear()
    yield
    compiler_options.options_accepted.cache_clear()


def test_refused_options_warn_once_and_programs_compile_without_them(refused_options):
    program = compiler_options.jit(lambda x: x * 2)
    with pytest.warns(RuntimeWarning, match="refuses.*xla_jaxdet_no_such_option") as caught:
        assert not compiler_options.options_accepted()
        assert float(program(jnp.float32(3.0))) == 6.0  # compiled without the options
        assert float(compiler_options.jit(jnp.negative)(jnp.float32(1.0))) == -1.0
        assert not compiler_options.options_accepted()
    assert len([w for w in caught if "refuses" in str(w.message)]) == 1
