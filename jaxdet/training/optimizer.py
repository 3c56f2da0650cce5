"""The optimizer: SGD with momentum (or Adam), weight decay on weights only, warm-up + steps.

Weight decay applies to kernels (conv and dense weights), not to biases or normalisation
scales, as the reference recipes do (Caffe's `decay_mult: 0` on biases). Parameters of frozen
backbone stages get no update at all: their gradient is already zero (`stop_gradient` in the
forward pass), and the mask here keeps weight decay from shrinking them.

`make_optimizer` is memoised on its (hashable) arguments: two train states of one config share
the same optax object, so the jit-compiled step, which holds it as a static field, is not
compiled again for a restored or re-created state.
"""

import functools
from typing import Any, Callable, Hashable, Tuple

import jax
import jax.numpy as jnp
import optax

from jaxdet.settings import OptimizerSettings

OPTIMIZERS = ("sgd", "adam")


def learning_rate_schedule(*, base: float, warmup_steps: int = 0, warmup_factor: float = 1.0 / 3,
                           boundaries: Tuple[int, ...] = (), decay_factor: float = 0.1) -> optax.Schedule:
    """Linear warm-up from `base * warmup_factor` to `base`, then x `decay_factor` at each boundary.

    Returns:
      schedule(step int scalar) -> float32 scalar learning rate (jit-compatible).
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if list(boundaries) != sorted(boundaries):
        raise ValueError(f"decay_steps must be increasing, got {boundaries}")
    bounds = jnp.asarray(tuple(boundaries), jnp.int32)

    def schedule(step):
        step = jnp.asarray(step, jnp.int32)
        decay = jnp.float32(decay_factor) ** jnp.sum(step >= bounds).astype(jnp.float32)
        ramp = jnp.minimum(step.astype(jnp.float32) / max(warmup_steps, 1), 1.0)
        warm = jnp.where(step < warmup_steps, warmup_factor + (1.0 - warmup_factor) * ramp, 1.0)
        return jnp.float32(base) * decay * warm

    return schedule


def _keys(path) -> tuple:
    return tuple(getattr(k, "key", str(k)) for k in path)


def frozen_mask(params: Any, is_frozen: Callable[[tuple], bool]) -> Any:
    """Pytree of bool like `params`: True where `is_frozen(path of dict keys)`."""
    return jax.tree_util.tree_map_with_path(lambda p, _: bool(is_frozen(_keys(p))), params)


def decay_mask(params: Any, is_frozen: Callable[[tuple], bool]) -> Any:
    """Pytree of bool like `params`: True for the kernels that are not frozen."""
    return jax.tree_util.tree_map_with_path(lambda p, _: _keys(p)[-1] == "kernel" and not is_frozen(_keys(p)), params)


@functools.lru_cache(maxsize=64)
def make_optimizer(settings: OptimizerSettings, is_frozen: Hashable = None) -> Tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer and its learning-rate schedule.

    Args:
      settings: OptimizerSettings.
      is_frozen: hashable callable (parameter path tuple) -> bool; None freezes nothing.

    Returns:
      (tx, schedule); equal arguments give the identical objects.
    """
    if settings.name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name must be one of {OPTIMIZERS}, got {settings.name!r}")
    is_frozen = is_frozen or (lambda path: False)
    schedule = learning_rate_schedule(base=settings.learning_rate, warmup_steps=settings.warmup_steps,
                                      warmup_factor=settings.warmup_factor, boundaries=settings.decay_steps,
                                      decay_factor=settings.decay_factor)
    if settings.name == "sgd":
        update = optax.sgd(schedule, momentum=settings.momentum)
    else:
        update = optax.adam(schedule)
    tx = optax.chain(
        optax.clip_by_global_norm(settings.clip_norm) if settings.clip_norm > 0 else optax.identity(),
        # L2 added to the gradient (Caffe's weight_decay), before momentum.
        optax.add_decayed_weights(settings.weight_decay, mask=lambda p: decay_mask(p, is_frozen)),
        update,
        optax.masked(optax.set_to_zero(), lambda p: frozen_mask(p, is_frozen)),
    )
    return tx, schedule
