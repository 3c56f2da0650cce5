"""Checks of static (Python) arguments: a ValueError naming the argument, raised at trace time.

Shared by `jaxdet.ops.nms`, `jaxdet.proposals` and `jaxdet.targets`, whose counts, thresholds
and fractions must be Python numbers (they fix shapes or are compared outside jit).
"""

import numbers


def check_fraction(name, value, *, low=0.0, high=1.0, include_low=True):
    """Raises ValueError unless ``value`` is a Python number in [low, high] (or (low, high])."""
    ok = isinstance(value, numbers.Real) and (low <= value if include_low else low < value)
    if not ok or not value <= high:
        interval = ("[" if include_low else "(") + f"{low}, {high}]"
        raise ValueError(f"{name} must be a Python number in {interval}, got {value!r}")


def check_count(name, value):
    """Raises ValueError unless ``value`` is a positive Python int."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
