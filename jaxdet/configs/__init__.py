"""Experiment configs: `get_config(variant="")` functions returning an `ml_collections.ConfigDict`.

The named configs ship with the package, as modules of this one: `base` (the paper's VGG16 VOC07
recipe, every field explained) and the variants that start from it, `vgg16_voc07`, `vgg16_coco`,
`fast_rcnn_vgg16`, `tiny_shapes` and `shapes_demo`. A config of your own is a Python file
anywhere with the same `get_config` (it may start from `jaxdet.configs.base.get_config()`); it
is read by path, not imported (ml_collections' convention).

    load_config("tiny_shapes:smoke")        a named config and its variant
    load_config("my_configs/voc.py:smoke")  a config file
"""

import importlib
import importlib.util
import os

from jaxdet.errors import UsageError

NAMES = ("shapes_demo", "tiny_shapes", "vgg16_voc07", "vgg16_coco", "fast_rcnn_vgg16")


class ConfigNotFound(UsageError, FileNotFoundError):
    """A config spec that is neither a config file nor one of NAMES; the message lists them."""


def load_config_module(path):
    """The executed module of the Python config file at `path`."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config_file(path, variant=""):
    """`get_config(variant)` of the config file at `path` (`get_config()` for no variant)."""
    module = load_config_module(path)
    if not hasattr(module, "get_config"):
        raise ConfigNotFound(f"config file {path} has no get_config() function")
    return module.get_config(variant) if variant else module.get_config()


def load_config(spec):
    """The ConfigDict of `spec`: `NAME[:VARIANT]` for a named config (NAMES), else `PATH[:VARIANT]`
    of a config file (`.py` may be left out).

    Raises:
      ConfigNotFound: no such file or name.
      ValueError: the config does not know the variant.
    """
    path, _, variant = spec.partition(":")
    if path in NAMES:
        module = importlib.import_module(f"{__name__}.{path}")
        return module.get_config(variant) if variant else module.get_config()
    for candidate in (path, path + ".py"):
        if os.path.isfile(candidate):
            return load_config_file(candidate, variant)
    raise ConfigNotFound(f"config file {path!r} not found. Give the path of a Python config file with a "
                         f"get_config() function, or one of the configs that come with jaxdet by name: "
                         f"{', '.join(NAMES)}.")
